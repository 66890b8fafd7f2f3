"""Policy configuration: thresholds per risk level plus the anti-flapping knobs.

High-risk tasks get tighter thresholds (smaller drops and lower crosstalk rates count, fewer
failed rebalances before a fork); low-risk tasks are never forked for degradation alone.
Both classes round-trip through JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self, TypeVar

from pydantic import TypeAdapter

from policies.detectors import DEFAULT_THRESHOLD
from policies.ratios import RatioConfig
from policies.signals import RISK_LEVELS, Risk
from policies.windows import DEFAULT_FALSE_FLAGS, DEFAULT_LATCH_Z

__all__ = ["DEFAULT_RISK", "PolicyConfig", "RiskPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds for the tasks of one risk level."""

    # Degradation detector: smallest drop in acceptance worth an alarm, and the mixture
    # threshold (nats; DEFAULT_THRESHOLD gives ~0.8-0.9 false alarms per 100k events and the
    # rate scales as exp(-threshold): -0.75 for high risk ≈ 2 per 100k, +0.75 for low ≈ 0.4).
    min_drop: float = 0.03
    detector_threshold: float = DEFAULT_THRESHOLD
    # Leak rate that turns "leaking" on once proven above it, and the lower rate that turns
    # it off once proven below it (PolicyConfig.crosstalk_z, crosstalk_false_flags).
    crosstalk_on: float = 0.05
    crosstalk_off: float = 0.025
    # Drop in eval score / live acceptance tolerated before it counts as a regression.
    regression_tolerance: float = 0.02
    # Fork after this many rebalances did not fix degradation/leak (None: never).
    fork_after_rebalances: int | None = 2
    # Fork after this many consecutive retrains regressed the task (None: never).
    fork_after_regressions: int | None = 2
    # Measured affinity below this is negative transfer: fork the harmed task.
    max_negative_affinity: float = -0.03
    # Retrain a task's adapter once this task alone buffered this many new examples, even if
    # the adapter's total is below ``PolicyConfig.min_new_examples`` (None: only the total).
    # A high-risk task forked into its own adapter gets a small share of the traffic, so the
    # adapter-wide threshold would leave its feedback unused for thousands of requests; each
    # retrain on that feedback lowers the residual leak further.
    min_new_examples: int | None = None
    # A task whose windowed crosstalk rate reaches this (with ``crosstalk_min_events`` in the
    # window) is flagged for the self-audit of its adapter's next training run: its answers to
    # fresh requests are searched for other tasks' style and trained against, whatever its
    # risk (TrainConfig.audit covers its risk levels anyway). None: never flagged. A shared
    # adapter's cheerful task leaking a few percent (below low risk's crosstalk_on) wins back
    # part of what sharing costs it.
    audit_at: float | None = 0.02

    def __post_init__(self) -> None:
        # Caught here, where the operator's config is read, not deep inside a task's window.
        if not 0.0 < self.crosstalk_off <= self.crosstalk_on <= 1.0:
            raise ValueError(f"need 0 < crosstalk_off <= crosstalk_on <= 1, got "
                             f"{self.crosstalk_off} and {self.crosstalk_on}")
        if not 0.0 < self.min_drop < 1.0 or self.regression_tolerance < 0.0:
            raise ValueError("min_drop must be in (0, 1) and regression_tolerance >= 0")
        if self.audit_at is not None and not 0.0 < self.audit_at <= 1.0:
            raise ValueError(f"audit_at must be in (0, 1] or None (never), got {self.audit_at}")
        for name in ("fork_after_rebalances", "fork_after_regressions", "min_new_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (never), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown risk policy keys: {sorted(unknown)}")
        return _typed(cls, data)


DEFAULT_RISK: dict[Risk, RiskPolicy] = {
    "low": RiskPolicy(
        min_drop=0.05,
        detector_threshold=DEFAULT_THRESHOLD + 0.75,
        crosstalk_on=0.10,
        crosstalk_off=0.05,
        regression_tolerance=0.04,
        fork_after_rebalances=None,
        fork_after_regressions=3,
        max_negative_affinity=-0.05,
    ),
    "medium": RiskPolicy(),
    "high": RiskPolicy(
        min_drop=0.02,
        detector_threshold=DEFAULT_THRESHOLD - 0.75,
        crosstalk_on=0.02,
        crosstalk_off=0.01,
        regression_tolerance=0.01,
        fork_after_rebalances=1,
        fork_after_regressions=2,
        max_negative_affinity=-0.01,
        min_new_examples=100,
    ),
}


@dataclass(frozen=True)
class PolicyConfig:
    """Everything the engine needs besides state and signals.  Times are seconds."""

    risk: Mapping[Risk, RiskPolicy] = field(default_factory=lambda: dict(DEFAULT_RISK))
    # After a training-inducing action or a promotion, the adapter is left alone this long
    # so the new version can be measured before anyone reacts to it.
    cooldown_s: float = 3600.0
    # After a fork, merge or rollback the task is left alone this long (no flapping).
    structural_cooldown_s: float = 6 * 3600.0
    # A training action not followed by a promotion blocks new ones for at most this long
    # (then the job is presumed lost and the policy may act again).
    training_timeout_s: float = 6 * 3600.0
    # A rebalance counts as "did not help" after its retrain was promoted, or after this.
    rebalance_patience_s: float = 12 * 3600.0
    # A task healthy this long forgets its failed rebalances and regressions.
    healthy_reset_s: float = 3 * 86400.0
    # An isolated task must be compatible with its old adapter this long before a merge,
    # and isolated at least min_isolation_s. Compatible: same tone, similar risk, affinity
    # measured both ways and neither negative beyond affinity_noise (the bar that lets a pair
    # share at bootstrap); the merge itself also waits until the task's own answers prove it
    # clean (leak rate's upper bound at fork_leak_z below crosstalk_on).
    merge_after_s: float = 7 * 86400.0
    min_isolation_s: float = 86400.0
    # Retrain an adapter once its tasks have buffered this many new examples.
    min_new_examples: int = 200
    # After a rejected version, train again once the data grew by min_new_examples or by this
    # fraction of its size, whichever comes first.
    retry_growth: float = 0.1
    max_concurrent_jobs: int = 1
    # Fork/merge/rollback touching a high-risk task wait for an operator's approval.
    propose_only_high_risk: bool = False
    # Live comparison after a promotion (rollback): how long, how many events per side,
    # and the one-sided z needed.
    probation_s: float = 6 * 3600.0
    probation_min_events: int = 200
    rollback_z: float = 2.33
    # Per-task rolling window.
    window_size: int = 500
    window_buckets: int = 10
    crosstalk_min_events: int = 50
    # The window's "leaking" latch is a one-sided test on the leak rate behind its crosstalk
    # flags: on when the Wilson lower bound at this z exceeds the risk level's crosstalk_on
    # (with crosstalk_min_events in the window), off when the upper bound falls below
    # crosstalk_off. 2.33 (one-sided 99 %), for a high-risk task (crosstalk_on 2 %) on clean
    # answers flagged at the assumed crosstalk_false_flags (0.5 %): a fresh window (after a
    # promotion) latches falsely in its first window_size answers with probability 1.7e-4 for
    # the default window (500, 50 events), 7.5e-4 for the simulation's (200, 20); at twice
    # that flag rate 2.6e-3 and 6.2e-3 (exact binomial). A raw-rate latch (on at one flag in
    # 50) latches 25 % of fresh windows at 0.5 %. A 10 % leak still latches after a median
    # 50 (28) checked answers, a 5 % one after 84 (96); 2.58 would make that 114 (134) for a
    # third of the false latches. ``python -m bench.detect --calibrate-latch`` prints the table.
    crosstalk_z: float = DEFAULT_LATCH_Z
    # Share of clean answers the sources of crosstalk flags flag anyway (the automatic style
    # detector's false positives, users naming a style that is not there): discounted from the
    # flag rate before any crosstalk threshold is compared (policies.signals.leak_bounds).
    # Measure it on answers known to be clean; with user flags only it is about 0.
    crosstalk_false_flags: float = DEFAULT_FALSE_FLAGS
    # A leak forks a low/medium-risk task only when the window proves it: the leak rate's
    # lower bound at this z must exceed the switch-off rate (high-risk: the latch suffices).
    fork_leak_z: float = 1.64
    # Events a rebalanced high-risk task's crosstalk tally keeps (policies/mixture.py).
    mixture_window: int = 1000
    # Live outputs nobody flagged go through the automatic style detector (the suite's
    # markers, then n-grams preferring another task by this many nats: live crosstalk is
    # user flags plus this detector). None: user flags only.
    auto_crosstalk_margin: float | None = 2.0
    # A retrain's eval counts as regressing a task (towards ``fork_after_regressions``) only
    # when the drop beyond tolerance is also this many standard errors of the paired
    # difference (the promotion gate's test; 0: the tolerance alone decides).
    regression_z: float = 1.64
    # Warm-up events to estimate a baseline when none is given at promotion.
    warmup: int = 500
    # A non-high-risk task leaking the style of a co-task is left to the mixture, not forked,
    # when the pair is compatible: same tone, risk levels at most max_risk_gap apart, and
    # affinity of at least partner_min_affinity both ways (sharing measurably does not hurt).
    partner_min_affinity: float = 0.0
    max_risk_gap: int = 1
    # Measured affinity within this distance of 0 is the measurement's noise, never negative
    # transfer: one run's TAG estimate (three lookahead probes on 8 examples per task) scatters
    # by a couple of hundredths and no run reports its standard error. A fork on negative
    # transfer needs the estimate below both its risk level's max_negative_affinity and
    # -affinity_noise (``max_negative``).
    affinity_noise: float = 0.02
    ratios: RatioConfig = field(default_factory=RatioConfig)

    # Simulation only (`adaptd simulate`; production leaves it None).
    # The engine's clock. None: wall time. A number: policy time advances this many seconds
    # per observed feedback event (and per tick that learns of finished jobs) and stands still
    # otherwise (while a job trains, say), so a simulation's decisions do not depend on how
    # fast the machine trains (``policies.tick.TickState.clock``). Every time above is then
    # measured in events; a database keeps one clock.
    seconds_per_event: float | None = None

    def __post_init__(self) -> None:
        missing = [r for r in RISK_LEVELS if r not in self.risk]
        if missing:
            raise ValueError(f"risk policy missing for {missing}")
        if self.max_concurrent_jobs < 0:
            raise ValueError("max_concurrent_jobs must be >= 0")
        if not 0.0 < self.retry_growth <= 1.0:
            raise ValueError("retry_growth must be in (0, 1]")
        if self.seconds_per_event is not None and not self.seconds_per_event > 0.0:
            raise ValueError(f"seconds_per_event must be > 0 or None, got {self.seconds_per_event}")
        if self.regression_z < 0.0:
            raise ValueError(f"regression_z must be >= 0, got {self.regression_z}")
        if self.mixture_window < self.window_buckets:
            raise ValueError("mixture_window must be >= window_buckets")
        if self.affinity_noise < 0.0:
            raise ValueError(f"affinity_noise must be >= 0, got {self.affinity_noise}")
        if self.crosstalk_z < 0.0 or not 0.0 <= self.crosstalk_false_flags < 1.0:
            raise ValueError("need crosstalk_z >= 0 and 0 <= crosstalk_false_flags < 1, got "
                             f"{self.crosstalk_z} and {self.crosstalk_false_flags}")

    def for_risk(self, risk: Risk) -> RiskPolicy:
        return self.risk[risk]

    def max_negative(self) -> dict[Risk, float]:
        """Per risk level, the affinity below which a measurement is negative transfer: the
        level's ``max_negative_affinity``, and beyond the measurement's noise.

        >>> PolicyConfig().max_negative()
        {'low': -0.05, 'medium': -0.03, 'high': -0.02}
        """
        return {r: min(self.risk[r].max_negative_affinity, -self.affinity_noise)
                for r in RISK_LEVELS}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "risk":
                value = {r: self.risk[r].to_dict() for r in RISK_LEVELS}
            elif f.name == "ratios":
                value = self.ratios.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Partial dicts are fine: missing keys keep their defaults (also inside ``risk``)."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown policy config keys: {sorted(unknown)}")
        full = cls().to_dict()
        full.update({k: v for k, v in data.items() if k not in ("risk", "ratios")})
        for level, values in (data.get("risk") or {}).items():
            if level not in RISK_LEVELS:
                raise ValueError(f"unknown risk level {level!r}")
            full["risk"][level] = RiskPolicy.from_dict({**full["risk"][level], **values})
        if "ratios" in data:
            full["ratios"] = RatioConfig.from_dict({**full["ratios"], **data["ratios"]})
        return _typed(cls, full)


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _typed(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls`` from ``data``, each value converted to its field's type the way settings are
    (an environment variable gives ``"600"`` for a number of seconds), or a ValueError naming
    the field."""
    adapter = _ADAPTERS.get(cls) or _ADAPTERS.setdefault(cls, TypeAdapter(cls))
    typed: T = adapter.validate_python(dict(data))
    return typed
