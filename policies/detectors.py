"""Sequential detection of a quality drop on a Bernoulli accept/reject stream.

The detector answers one question per event: "is this task's acceptance rate now below the
baseline set at the last promotion?".  It is a mixture of Shiryaev-Roberts procedures over a
grid of drops: component ``k`` tracks ``R_k = (1 + R_k) * LR_k(x)``, the likelihood ratio of
"the rate fell from ``baseline`` to ``baseline - d_k`` at some point" against "no change",
summed over all possible change points; the detector alarms when the average of the ``R_k``
reaches ``exp(threshold)``.  The drops ``d_k`` form a geometric grid (factor ``grid_ratio``)
from ``min_drop`` to ``max_drop``, so any drop in between is within a few percent of the
efficiency of its nearest component.

Why Shiryaev-Roberts and a mixture: a task's detector runs for weeks, false alarms are
dismissed and it keeps going; for that multi-cyclic setting SR minimises the average delay to
detect a change for a given false-alarm rate (Pollak & Tartakovsky, 2009), and CUSUM, the usual
choice, is slightly worse.  Each ``R_k - n`` is a martingale before the change, so the average
over components has expected value ``n`` whatever the grid: every component gets an equal
share of the false-alarm budget, neighbours that rise together add up their evidence, and one
threshold sets the rate of the whole mixture.  ``DEFAULT_THRESHOLD`` was calibrated by
simulation (``python bench/detect.py --calibrate``): at most one false alarm per 100,000
events for baselines between 0.6 and 0.98.

State is plain data (``to_dict`` / ``from_dict`` round-trip through JSON) so any worker can
load a task's detector, feed it a batch of events and store it back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Self

__all__ = ["DEFAULT_THRESHOLD", "DegradationDetector"]

DEFAULT_THRESHOLD = 11.5
"""ln of the mixture's alarm level: <= 1 false alarm per 100,000 events (module docstring)."""

_KIND = "bernoulli-sr-mixture"
# A component whose alternative rate would fall below this is useless (and its reject
# likelihood ratio would blow up), so it is left out of the grid.
_MIN_ALT_RATE = 0.005
# An estimated or given baseline is clipped into this range: a baseline of exactly 0 or 1 has
# infinite likelihood ratios.
_BASELINE_RANGE = (0.02, 0.995)


class DegradationDetector:
    """Alarm when a Bernoulli acceptance stream drops below its baseline (SR mixture).

    Follows river's detector shape: ``update(x)`` returns ``self``; ``drift_detected`` is
    true on the one update that raised the alarm, after which the statistics restart (so a
    persisting drop alarms again).  ``degraded`` is latched: it stays true from an alarm until
    a recovery test finds the stream back at the baseline (hysteresis), or until ``reset``.

    Before a baseline exists (``baseline=None``) the first ``warmup`` events estimate one.

    Parameters are public attributes; treat them as read-only after construction.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = DegradationDetector(baseline=0.9)
    >>> stream = [rng.random() < 0.9 for _ in range(5000)]
    >>> stream += [rng.random() < 0.8 for _ in range(2000)]
    >>> first = next(i for i, x in enumerate(stream) if det.update(x).drift_detected)
    >>> first - 5000  # events after the rate fell from 0.90 to 0.80
    57
    >>> det.degraded, det.estimated_rate
    (True, 0.82)
    >>> DegradationDetector.from_dict(det.to_dict()).to_dict() == det.to_dict()
    True
    """

    def __init__(
        self,
        baseline: float | None = None,
        *,
        min_drop: float = 0.02,
        max_drop: float = 0.4,
        grid_ratio: float = math.sqrt(2.0),
        threshold: float = DEFAULT_THRESHOLD,
        warmup: int = 500,
        warmup_margin: float = 1.0,
        recovery_threshold: float = 4.6,
    ) -> None:
        if not 0.0 < min_drop <= max_drop < 1.0:
            raise ValueError("need 0 < min_drop <= max_drop < 1")
        if grid_ratio <= 1.0:
            raise ValueError("grid_ratio must be > 1")
        if warmup < 1:
            raise ValueError("warmup must be >= 1")
        self.min_drop = float(min_drop)
        self.max_drop = float(max_drop)
        self.grid_ratio = float(grid_ratio)
        self.threshold = float(threshold)
        self.warmup = int(warmup)
        # Subtracting this many standard errors from a warm-up estimate: an over-estimated
        # baseline makes every later event look like a drop (false alarms), an under-estimated
        # one only costs a little sensitivity.
        self.warmup_margin = float(warmup_margin)
        # Log-odds (nats) in favour of "back at baseline" needed to clear ``degraded``;
        # 4.6 ≈ ln 100.
        self.recovery_threshold = float(recovery_threshold)
        self._baseline: float | None = None
        self._stats: list[float] = []
        self._n = 0
        self._warm_n = 0
        self._warm_acc = 0
        self._drift = False
        self._degraded = False
        self._alarm_rate: float | None = None
        self._recovery = 0.0
        self._alarms = 0
        self._rates: list[float] = []
        self._lr_acc: list[float] = []
        self._lr_rej: list[float] = []
        self._limit = math.inf
        self.reset(baseline)

    # -- configuration -------------------------------------------------------------------

    def _configure(self, baseline: float | None) -> None:
        """Set the baseline and rebuild the per-component tables derived from it."""
        self._rates, self._lr_acc, self._lr_rej = [], [], []
        if baseline is None:
            self._baseline = None
            self._stats = []
            return
        lo, hi = _BASELINE_RANGE
        p0 = min(max(float(baseline), lo), hi)
        self._baseline = p0
        drop = self.min_drop
        # The 1e-9 slack keeps max_drop itself on the grid despite rounding.
        while drop <= self.max_drop * (1.0 + 1e-9):
            p1 = p0 - drop
            if p1 >= _MIN_ALT_RATE:
                self._rates.append(round(p1, 12))
                self._lr_acc.append(p1 / p0)
                self._lr_rej.append((1.0 - p1) / (1.0 - p0))
            drop *= self.grid_ratio
        self._stats = [0.0] * len(self._rates)
        # Alarm when mean(R_k) >= exp(threshold), i.e. sum(R_k) >= K * exp(threshold).
        self._limit = len(self._rates) * math.exp(self.threshold)

    def reset(self, baseline: float | None = None) -> None:
        """Start over against ``baseline`` (``None``: estimate one from a warm-up window).

        Clears the statistics, the latched ``degraded`` flag and the alarm count.
        """
        self._configure(baseline)
        self._n = 0
        self._warm_n = 0
        self._warm_acc = 0
        self._drift = False
        self._degraded = False
        self._alarm_rate = None
        self._recovery = 0.0
        self._alarms = 0

    # -- updating ------------------------------------------------------------------------

    def update(self, x: bool | int | float) -> Self:
        """Feed one event: truthy = accepted, falsy = rejected."""
        # river semantics: the flag describes the latest update only.
        self._drift = False
        accepted = bool(x)
        p0 = self._baseline
        if p0 is None:
            self._warm_n += 1
            self._warm_acc += accepted
            if self._warm_n >= self.warmup:
                self._configure(self._warm_estimate())
            return self
        self._n += 1
        lr = self._lr_acc if accepted else self._lr_rej
        stats = [(1.0 + r) * f for r, f in zip(self._stats, lr, strict=True)]
        self._stats = stats
        if self._degraded and self._rates:
            self._update_recovery(accepted, p0, self._rates[0])
        if stats and sum(stats) >= self._limit:
            self._drift = True
            self._degraded = True
            # The component with the most evidence estimates the new rate.
            self._alarm_rate = self._rates[max(range(len(stats)), key=stats.__getitem__)]
            self._recovery = 0.0
            self._alarms += 1
            self._stats = [0.0] * len(stats)  # restart (multi-cyclic SR)
        return self

    def update_many(self, xs: Iterable[bool | int | float]) -> list[int]:
        """Feed a batch; returns the positions (within ``xs``) that raised an alarm."""
        return [i for i, x in enumerate(xs) if self.update(x)._drift]

    def _update_recovery(self, accepted: bool, p0: float, p1: float) -> None:
        # CUSUM for "back at the baseline" against "still down by min_drop" (``p1``): its
        # drift is positive only once the rate is above about baseline - min_drop/2, so
        # ``degraded`` does not flicker while the rate sits near the alarm boundary.
        step = math.log(p0 / p1) if accepted else math.log((1.0 - p0) / (1.0 - p1))
        self._recovery = max(0.0, self._recovery + step)
        if self._recovery >= self.recovery_threshold:
            self._degraded = False
            self._alarm_rate = None
            self._recovery = 0.0

    def _warm_estimate(self) -> float:
        n = self._warm_n
        p = (self._warm_acc + 1.0) / (n + 2.0)  # Laplace: never exactly 0 or 1
        return p - self.warmup_margin * math.sqrt(p * (1.0 - p) / n)

    # -- read-only view ------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        """True on the update that raised an alarm."""
        return self._drift

    @property
    def degraded(self) -> bool:
        """Latched alarm: true from an alarm until recovery or ``reset``."""
        return self._degraded

    @property
    def baseline(self) -> float | None:
        """The acceptance rate tested against (``None`` while warming up)."""
        return self._baseline

    @property
    def warming_up(self) -> bool:
        return self._baseline is None

    @property
    def estimated_rate(self) -> float | None:
        """Post-change rate of the strongest component at the latest alarm (while degraded)."""
        return self._alarm_rate

    @property
    def evidence(self) -> float:
        """How far the mixture is towards an alarm on a log scale, 0..1 (dashboards)."""
        if not self._stats or self.threshold <= 0:
            return 0.0
        mean = sum(self._stats) / len(self._stats)
        return min(1.0, max(0.0, math.log(mean) if mean > 0 else 0.0) / self.threshold)

    @property
    def alarms(self) -> int:
        """Alarms since the last ``reset``."""
        return self._alarms

    @property
    def n_samples(self) -> int:
        """Events tested against the baseline since the last ``reset`` (not warm-up)."""
        return self._n

    @property
    def alternatives(self) -> list[float]:
        """The post-change rates the grid tests for (empty while warming up)."""
        return list(self._rates)

    @property
    def components(self) -> list[tuple[float, float, float]]:
        """Per component: (alternative rate, likelihood ratio on accept, on reject).

        The exact arithmetic of ``update`` (with the alarm at ``sum(R) >= len * exp(threshold)``),
        for vectorised re-implementations such as the calibration in ``bench/detect.py``.
        """
        return list(zip(self._rates, self._lr_acc, self._lr_rej, strict=True))

    # -- serialisation -------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "min_drop": self.min_drop,
            "max_drop": self.max_drop,
            "grid_ratio": self.grid_ratio,
            "threshold": self.threshold,
            "warmup": self.warmup,
            "warmup_margin": self.warmup_margin,
            "recovery_threshold": self.recovery_threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data: parameters plus state (tables are rebuilt on load)."""
        return {
            "kind": _KIND,
            "params": self.params(),
            "baseline": self._baseline,
            "stats": list(self._stats),
            "n": self._n,
            "warm_n": self._warm_n,
            "warm_acc": self._warm_acc,
            "drift": self._drift,
            "degraded": self._degraded,
            "alarm_rate": self._alarm_rate,
            "recovery": self._recovery,
            "alarms": self._alarms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if data.get("kind") != _KIND:
            raise ValueError(f"not a {_KIND} detector state: {data.get('kind')!r}")
        det = cls(data["baseline"], **data["params"])
        stats = [float(s) for s in data["stats"]]
        if len(stats) != len(det._stats):
            raise ValueError("detector state does not match its parameters")
        det._stats = stats
        det._n = int(data["n"])
        det._warm_n = int(data["warm_n"])
        det._warm_acc = int(data["warm_acc"])
        det._drift = bool(data["drift"])
        det._degraded = bool(data["degraded"])
        rate = data["alarm_rate"]
        det._alarm_rate = None if rate is None else float(rate)
        det._recovery = float(data["recovery"])
        det._alarms = int(data["alarms"])
        return det

    def __repr__(self) -> str:
        return (
            f"DegradationDetector(baseline={self._baseline}, degraded={self._degraded}, "
            f"evidence={self.evidence:.3f}, n={self._n})"
        )
