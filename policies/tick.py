"""The policy tick's own bookkeeping, beside the engine's state, and the engine's clock.

Stored as the ``meta`` object of the policy state row (the JSON keys are the field names;
``storage.crud.count_unaccounted_jobs`` reads ``jobs_seen``). Plain data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from policies.config import PolicyConfig

__all__ = ["SENT_TTL_S", "TickState"]

SENT_TTL_S = 86400.0  # hand-offs older than this are forgotten


@dataclass
class TickState:
    """What the tick remembers between runs.

    >>> t = TickState(jobs_seen=4, observed_total=300, affinity={("a", "b"): -0.1})
    >>> TickState.from_dict(t.to_dict()) == t
    True
    >>> t.to_dict()["affinity"]
    [['a', 'b', -0.1]]
    """

    jobs_seen: int = 0  # finished jobs accounted for: every job id up to this one
    observed_total: int = 0  # feedback events fed to the engine so far
    clock_jobs: int = 0  # ticks that accounted finished jobs (they move an event clock)
    sent: dict[int, float] = field(default_factory=dict)  # job id -> when handed to the queue
    bootstrap_given_up: dict[str, float] = field(default_factory=dict)  # adapter -> when
    rebuild_given_up: dict[str, str] = field(default_factory=dict)  # adapter -> base build
    # The running inter-task affinity estimate (``policies.fold_affinity``).
    affinity: dict[tuple[str, str], float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs_seen": self.jobs_seen,
            "observed_total": self.observed_total,
            "clock_jobs": self.clock_jobs,
            "sent": {str(k): v for k, v in self.sent.items()},
            "bootstrap_given_up": dict(self.bootstrap_given_up),
            "rebuild_given_up": dict(self.rebuild_given_up),
            "affinity": [[i, j, z] for (i, j), z in self.affinity.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Missing keys take their defaults (a state stored before a key existed loads)."""
        return cls(
            jobs_seen=int(data.get("jobs_seen", 0)),
            observed_total=int(data.get("observed_total", 0)),
            clock_jobs=int(data.get("clock_jobs", 0)),
            sent={int(k): float(v) for k, v in (data.get("sent") or {}).items()},
            bootstrap_given_up={str(k): float(v)
                                for k, v in (data.get("bootstrap_given_up") or {}).items()},
            rebuild_given_up={str(k): str(v)
                              for k, v in (data.get("rebuild_given_up") or {}).items()},
            affinity={(str(i), str(j)): float(z) for i, j, z in data.get("affinity") or []},
        )

    def clock(self, config: PolicyConfig, wall: float) -> float:
        """The engine's ``now``: wall time, or (``config.seconds_per_event`` set) that many
        seconds per event observed and per tick that learnt of finished jobs. On such an
        event clock a synchronous simulation takes the same decisions on a fast or a slow
        machine; every time of the engine's config is then measured in events.

        >>> TickState(observed_total=300).clock(PolicyConfig(), wall=1.8e9)
        1800000000.0
        >>> TickState(observed_total=300, clock_jobs=2).clock(
        ...     PolicyConfig(seconds_per_event=0.5), wall=1.8e9)
        151.0
        """
        if config.seconds_per_event is None:
            return wall
        return (self.observed_total + self.clock_jobs) * config.seconds_per_event

    def accounting_clock(self, config: PolicyConfig, wall: float) -> float:
        """The time at which finished jobs are accounted: on an event clock one step after
        :meth:`clock`, so a job's outcome comes after the decision that started it, as on a
        wall clock (otherwise "has the rebalance had its chance?" would never say yes)."""
        return self.clock(config, wall) + (config.seconds_per_event or 0.0)

    def accounted(self, config: PolicyConfig, jobs_seen: int) -> None:
        """Record that accounting moved ``jobs_seen`` on; an event clock steps once."""
        if config.seconds_per_event and jobs_seen != self.jobs_seen:
            self.clock_jobs += 1
        self.jobs_seen = jobs_seen

    def hand_off(self, new: Iterable[int], stale: Iterable[int], *, wall: float,
                 resend_after_s: float) -> list[int]:
        """The jobs to hand to the train queue now: every ``new`` one, and each ``stale`` one
        (queued and never picked up, or its lease expired) not handed off within
        ``resend_after_s``. Hand-offs run on wall time whatever the engine's clock.

        >>> t = TickState(sent={7: 900.0})
        >>> t.hand_off([9], [7, 8], wall=1000.0, resend_after_s=600.0)
        [9, 8]
        >>> sorted(t.sent.items())
        [(7, 900.0), (8, 1000.0), (9, 1000.0)]
        """
        self.sent = {k: v for k, v in self.sent.items() if wall - v < SENT_TTL_S}
        new = list(new)
        resend = [j for j in stale
                  if wall - self.sent.get(j, 0.0) > resend_after_s and j not in new]
        out = [*new, *resend]
        for job_id in out:
            self.sent[job_id] = wall
        return out
