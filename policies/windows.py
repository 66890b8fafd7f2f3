"""Rolling per-task window: acceptance and crosstalk, counted per source task and origin.

A task's window holds its last ~``size`` events in ``buckets`` equal buckets, so the state
stays a few small dicts (JSON-friendly) however long the stream, at the price of forgetting
one bucket at a time instead of one event at a time.

An event is a rated answer (accepted or not) or an answer nobody rated that the automatic
style detector checked (``accepted=None``). Both count towards the crosstalk rate, whose
denominator is every answer checked for crosstalk; only rated answers count towards
acceptance, so a silent answer is never read as a good or a bad one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from policies.signals import leak_bounds

__all__ = ["DEFAULT_FALSE_FLAGS", "DEFAULT_LATCH_Z", "ORIGINS", "CrosstalkWindow", "Origin"]

Origin = Literal["user", "auto"]
ORIGINS: tuple[Origin, ...] = ("user", "auto")
_KIND = "crosstalk-window"

DEFAULT_LATCH_Z = 2.33
"""One-sided z of the ``leaking`` latch's bounds (99 %): see ``PolicyConfig.crosstalk_z``."""
DEFAULT_FALSE_FLAGS = 0.005
"""Share of clean answers flagged as crosstalk anyway: see ``PolicyConfig.crosstalk_false_flags``."""


def _new_bucket() -> dict[str, Any]:
    # "un": unrated answers among "n"; "xt" maps source task -> [user-flagged, auto-detected]
    return {"n": 0, "acc": 0, "un": 0, "xt": {}}


class CrosstalkWindow:
    """Rolling acceptance and crosstalk rate of one task, with a latched ``leaking`` flag.

    ``leaking`` is a statistical decision on the leak rate behind the window's flags
    (``policies.signals.leak_bounds``: one-sided Wilson bounds at ``z``, corrected for the
    share ``false_flags`` of clean answers the sources of the flags flag anyway). It turns on
    when at least ``min_events`` events are in the window and the lower bound exceeds
    ``high``, and off only when the upper bound falls below ``low`` (hysteresis, so a rate
    hovering at the threshold does not flap). One flag in a few dozen answers proves no leak
    at a 2 % threshold; ``evidence_short`` tells such a window apart from a clean one.
    ``drift_detected`` is true on the update that turned ``leaking`` on (river's detector
    shape).

    >>> w = CrosstalkWindow(size=200, buckets=4, high=0.10, min_events=20)
    >>> for i in range(40):
    ...     _ = w.update(i % 5 != 0, "greeting" if i % 5 == 0 else None, "auto")
    >>> w.n, w.acceptance, w.crosstalk_rate, w.dominant_source, w.leaking
    (40, 0.8, 0.2, 'greeting', False)
    >>> round(w.leak_lower, 4), w.evidence_short  # 20 % seen, not yet proven above 10 %
    (0.0884, True)
    >>> on = [i for i in range(40, 100)
    ...       if w.update(i % 5 != 0, "greeting" if i % 5 == 0 else None, "auto").drift_detected]
    >>> on, w.leaking, round(w.leak_lower, 4)  # proven at the 9th flag, in 41 answers
    ([40], True, 0.119)
    >>> w.source_counts()
    {'greeting': {'user': 0, 'auto': 20}}
    >>> _ = w.update(None, "greeting", "auto")  # unrated: crosstalk evidence, no verdict
    >>> w.n, w.rated, w.acceptance, w.crosstalk
    (101, 100, 0.8, 21)
    >>> CrosstalkWindow.from_dict(w.to_dict()).to_dict() == w.to_dict()
    True
    """

    def __init__(
        self,
        *,
        size: int = 500,
        buckets: int = 10,
        high: float = 0.05,
        low: float | None = None,
        min_events: int = 50,
        z: float = DEFAULT_LATCH_Z,
        false_flags: float = DEFAULT_FALSE_FLAGS,
    ) -> None:
        if buckets < 1 or size < buckets:
            raise ValueError("need 1 <= buckets <= size")
        if not 0.0 < high <= 1.0:
            raise ValueError("high must be in (0, 1]")
        self.size = int(size)
        self.buckets = int(buckets)
        self.high = float(high)
        # Default hysteresis band: switch off at half the switch-on rate.
        self.low = float(high / 2.0 if low is None else low)
        if self.low > self.high:
            raise ValueError("low must be <= high")
        self.min_events = int(min_events)
        if z < 0.0 or not 0.0 <= false_flags < 1.0:
            raise ValueError("need z >= 0 and 0 <= false_flags < 1")
        self.z = float(z)
        self.false_flags = float(false_flags)
        self._buckets: list[dict[str, Any]] = [_new_bucket()]
        self._leaking = False
        self._drift = False

    @property
    def bucket_size(self) -> int:
        return max(1, self.size // self.buckets)

    def reset(self) -> None:
        """Forget all events (e.g. a new adapter version is now serving) and unlatch."""
        self._buckets = [_new_bucket()]
        self._leaking = False
        self._drift = False

    def update(self, accepted: bool | None, crosstalk_source: str | None = None,
               origin: Origin = "user") -> Self:
        """Count one event of this task; ``crosstalk_source`` is the task whose style leaked.
        ``accepted=None``: an answer nobody rated (its crosstalk can only be ``auto``)."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        if accepted is None and crosstalk_source is not None and origin != "auto":
            raise ValueError("an unrated answer's crosstalk can only come from the detector")
        self._drift = False
        cur = self._buckets[-1]
        if cur["n"] >= self.bucket_size:
            cur = _new_bucket()
            self._buckets.append(cur)
            if len(self._buckets) > self.buckets:
                del self._buckets[0]
        cur["n"] += 1
        if accepted is None:
            cur["un"] += 1
        else:
            cur["acc"] += bool(accepted)
        if crosstalk_source is not None:
            counts = cur["xt"].setdefault(crosstalk_source, [0, 0])
            counts[ORIGINS.index(origin)] += 1
        self._update_latch()
        return self

    def _update_latch(self) -> None:
        if not self._leaking:
            if self.n >= self.min_events and self.leak_lower > self.high:
                self._leaking = True
                self._drift = True
        elif self.leak_upper < self.low:
            self._leaking = False

    # -- read-only view ------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Answers in the window, rated or not: the crosstalk rate's denominator."""
        return sum(int(b["n"]) for b in self._buckets)

    @property
    def rated(self) -> int:
        """Rated answers in the window: the acceptance's denominator."""
        return sum(int(b["n"]) - int(b["un"]) for b in self._buckets)

    @property
    def accepted(self) -> int:
        return sum(int(b["acc"]) for b in self._buckets)

    @property
    def crosstalk(self) -> int:
        return sum(sum(sum(c) for c in b["xt"].values()) for b in self._buckets)

    @property
    def acceptance(self) -> float | None:
        """Accepted share of the rated answers in the window, ``None`` without any."""
        rated = self.rated
        return self.accepted / rated if rated else None

    @property
    def crosstalk_rate(self) -> float:
        n = self.n
        return self.crosstalk / n if n else 0.0

    @property
    def leak_lower(self) -> float:
        """One-sided lower bound of the leak rate (false flags discounted)."""
        return leak_bounds(self.crosstalk, self.n, self.z, self.false_flags)[0]

    @property
    def leak_upper(self) -> float:
        """One-sided upper bound of the leak rate (false flags discounted)."""
        return leak_bounds(self.crosstalk, self.n, self.z, self.false_flags)[1]

    @property
    def evidence_short(self) -> bool:
        """Not leaking, ``min_events`` in the window and the flags, false ones discounted,
        as frequent as a leak (at least ``high``), but too few to prove one: the latch
        waits for more evidence."""
        n = self.n
        if self._leaking or n < self.min_events or not self.crosstalk:
            return False
        f = self.false_flags
        return (self.crosstalk / n - f) / (1.0 - f) >= self.high

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Crosstalk events in the window per source task and origin (sorted by source)."""
        out: dict[str, list[int]] = {}
        for b in self._buckets:
            for src, counts in b["xt"].items():
                tot = out.setdefault(src, [0, 0])
                tot[0] += counts[0]
                tot[1] += counts[1]
        return {s: dict(zip(ORIGINS, out[s], strict=True)) for s in sorted(out)}

    @property
    def dominant_source(self) -> str | None:
        """Source task with the most crosstalk events (ties: alphabetical), if any."""
        counts = self.source_counts()
        if not counts:
            return None
        return max(sorted(counts), key=lambda s: sum(counts[s].values()))

    @property
    def leaking(self) -> bool:
        return self._leaking

    @property
    def drift_detected(self) -> bool:
        """True on the update that turned ``leaking`` on."""
        return self._drift

    # -- serialisation -------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "buckets": self.buckets,
            "high": self.high,
            "low": self.low,
            "min_events": self.min_events,
            "z": self.z,
            "false_flags": self.false_flags,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "params": self.params(),
            "buckets": [
                {"n": b["n"], "acc": b["acc"], "un": b["un"],
                 "xt": {s: list(c) for s, c in b["xt"].items()}}
                for b in self._buckets
            ],
            "leaking": self._leaking,
            "drift": self._drift,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if data.get("kind") != _KIND:
            raise ValueError(f"not a {_KIND} state: {data.get('kind')!r}")
        win = cls(**data["params"])
        win._buckets = [
            {
                "n": int(b["n"]),
                "acc": int(b["acc"]),
                "un": int(b.get("un", 0)),  # a stored state may lack the key
                "xt": {str(s): [int(c[0]), int(c[1])] for s, c in b["xt"].items()},
            }
            for b in data["buckets"]
        ] or [_new_bucket()]
        win._leaking = bool(data["leaking"])
        win._drift = bool(data["drift"])
        return win

    def __repr__(self) -> str:
        return (
            f"CrosstalkWindow(n={self.n}, acceptance={self.acceptance}, "
            f"crosstalk_rate={self.crosstalk_rate:.3f}, leak_lower={self.leak_lower:.3f}, "
            f"leaking={self._leaking})"
        )
