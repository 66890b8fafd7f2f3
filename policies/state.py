"""Policy state: plain data that any worker can load, update and store back as JSON.

``PolicyState.to_dict()`` gives JSON-safe data (str keys, numbers, lists, no NaN/inf);
``PolicyState.from_dict()`` rebuilds it exactly.  Keep the whole state in one JSON document
(one SQL row or Redis key) and update it under a lock or compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from policies.config import PolicyConfig
from policies.detectors import DegradationDetector
from policies.ratios import RatioState, add_task, prior_ratios, remove_task
from policies.signals import TaskProfile
from policies.windows import CrosstalkWindow

__all__ = [
    "STATE_VERSION",
    "AdapterState",
    "PolicyState",
    "Probation",
    "TaskState",
    "init_state",
    "make_detector",
    "make_mixture_tally",
    "make_window",
    "summarize",
    "sync_state",
]

STATE_VERSION = 1


def make_detector(
    profile: TaskProfile, config: PolicyConfig, baseline: float | None = None
) -> DegradationDetector:
    rp = config.for_risk(profile.risk)
    return DegradationDetector(
        baseline,
        min_drop=rp.min_drop,
        threshold=rp.detector_threshold,
        warmup=config.warmup,
    )


def make_window(profile: TaskProfile, config: PolicyConfig) -> CrosstalkWindow:
    rp = config.for_risk(profile.risk)
    return CrosstalkWindow(
        size=config.window_size,
        buckets=config.window_buckets,
        high=rp.crosstalk_on,
        low=rp.crosstalk_off,
        min_events=config.crosstalk_min_events,
        z=config.crosstalk_z,
        false_flags=config.crosstalk_false_flags,
    )


def make_mixture_tally(config: PolicyConfig) -> CrosstalkWindow:
    """A task's crosstalk under its adapter's serving mixture (see ``policies.mixture``).

    Only its counts are read; the latch is unused (``high=1``)."""
    return CrosstalkWindow(
        size=config.mixture_window, buckets=config.window_buckets, high=1.0, min_events=1
    )


@dataclass
class TaskState:
    """Everything the policy remembers about one task."""

    profile: TaskProfile
    adapter: str
    detector: DegradationDetector
    window: CrosstalkWindow
    data_size: int = 0
    rebalances: int = 0  # rebalances tried since the last fork/merge or healthy period
    last_rebalance_at: float | None = None
    regressions: int = 0  # consecutive retrains (not aimed at it) that made it worse
    forked_from: str | None = None
    isolated_since: float | None = None
    compatible_since: float | None = None
    healthy_since: float | None = None
    cooldown_until: float = 0.0  # structural (fork/merge/rollback) cool-down
    last_hold: str | None = None  # last hold reason logged, so a blocked action logs once
    # Crosstalk counted across promotions while the serving mixture stays the same, and the
    # mixture it counts under (``policies.mixture.mixture_key``; None: not yet known).
    mixture: CrosstalkWindow = field(default_factory=lambda: make_mixture_tally(PolicyConfig()))
    mixture_of: str | None = None
    # The adapter's ratios version made by this task's last counted rebalance: from the first
    # version trained on it, a high-risk task's tally counts whatever ratios follow
    # (``policies.mixture.rebalanced_leak``). None: not rebalanced since a fork/merge/reset.
    rebalanced_ratio: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_dict(),
            "adapter": self.adapter,
            "detector": self.detector.to_dict(),
            "window": self.window.to_dict(),
            "data_size": self.data_size,
            "rebalances": self.rebalances,
            "last_rebalance_at": self.last_rebalance_at,
            "regressions": self.regressions,
            "forked_from": self.forked_from,
            "isolated_since": self.isolated_since,
            "compatible_since": self.compatible_since,
            "healthy_since": self.healthy_since,
            "cooldown_until": self.cooldown_until,
            "last_hold": self.last_hold,
            "mixture": self.mixture.to_dict(),
            "mixture_of": self.mixture_of,
            "rebalanced_ratio": self.rebalanced_ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            profile=TaskProfile.from_dict(data["profile"]),
            adapter=str(data["adapter"]),
            detector=DegradationDetector.from_dict(data["detector"]),
            window=CrosstalkWindow.from_dict(data["window"]),
            data_size=int(data["data_size"]),
            rebalances=int(data["rebalances"]),
            last_rebalance_at=_opt_float(data["last_rebalance_at"]),
            regressions=int(data["regressions"]),
            forked_from=data["forked_from"],
            isolated_since=_opt_float(data["isolated_since"]),
            compatible_since=_opt_float(data["compatible_since"]),
            healthy_since=_opt_float(data["healthy_since"]),
            cooldown_until=float(data["cooldown_until"]),
            last_hold=data["last_hold"],
            # States stored before the tally existed start with an empty one.
            mixture=(CrosstalkWindow.from_dict(data["mixture"]) if "mixture" in data
                     else make_mixture_tally(PolicyConfig())),
            mixture_of=data.get("mixture_of"),
            rebalanced_ratio=data.get("rebalanced_ratio"),
        )


@dataclass
class Probation:
    """Live comparison of a freshly promoted version with the one it replaced."""

    since: float
    version: int
    previous_version: int
    before: dict[str, list[int]]  # task -> [accepted, events] of the old version's window
    after: dict[str, list[int]] = field(default_factory=dict)  # same, new version

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "version": self.version,
            "previous_version": self.previous_version,
            "before": {t: list(c) for t, c in sorted(self.before.items())},
            "after": {t: list(c) for t, c in sorted(self.after.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            since=float(data["since"]),
            version=int(data["version"]),
            previous_version=int(data["previous_version"]),
            before={str(t): [int(c[0]), int(c[1])] for t, c in data["before"].items()},
            after={str(t): [int(c[0]), int(c[1])] for t, c in data["after"].items()},
        )


@dataclass
class AdapterState:
    """One adapter: its tasks, mixture ratios and promotion bookkeeping."""

    tasks: list[str]
    ratios: RatioState
    version: int | None = None  # promoted version serving now
    cooldown_until: float = 0.0
    pending_since: float | None = None  # a training action awaits its promotion
    last_promotion_at: float | None = None
    probation: Probation | None = None
    # After a rejected version: the adapter's total data size at which it may train again
    # (retraining on the same data mostly re-draws the same verdict).
    retry_at_data: int | None = None
    rejected_at: float | None = None  # when the gate last turned a version down
    # Tasks merged in whose merged version is not promoted yet: task -> the adapter it left
    # ("adapter", its state as a dict, "isolated_since") and whether the gate rejected the
    # merged version ("rejected"), so the merge can be undone (``policies.merge.unmerge``).
    merging: dict[str, dict[str, Any]] = field(default_factory=dict)

    def data_size(self, tasks: Mapping[str, TaskState]) -> int:
        return sum(tasks[t].data_size for t in self.tasks if t in tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "ratios": self.ratios.to_dict(),
            "version": self.version,
            "cooldown_until": self.cooldown_until,
            "pending_since": self.pending_since,
            "last_promotion_at": self.last_promotion_at,
            "probation": None if self.probation is None else self.probation.to_dict(),
            "retry_at_data": self.retry_at_data,
            "rejected_at": self.rejected_at,
            "merging": {t: dict(m) for t, m in sorted(self.merging.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        prob = data["probation"]
        return cls(
            tasks=[str(t) for t in data["tasks"]],
            ratios=RatioState.from_dict(data["ratios"]),
            version=None if data["version"] is None else int(data["version"]),
            cooldown_until=float(data["cooldown_until"]),
            pending_since=_opt_float(data["pending_since"]),
            last_promotion_at=_opt_float(data["last_promotion_at"]),
            probation=None if prob is None else Probation.from_dict(prob),
            retry_at_data=_opt_int(data.get("retry_at_data")),  # absent in older states
            rejected_at=_opt_float(data.get("rejected_at")),
            merging={str(t): dict(m) for t, m in (data.get("merging") or {}).items()},
        )


@dataclass
class PolicyState:
    """The whole policy state; ``pending`` holds proposals awaiting an operator (as dicts)."""

    tasks: dict[str, TaskState] = field(default_factory=dict)
    adapters: dict[str, AdapterState] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0  # last decision number handed out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "tasks": {n: t.to_dict() for n, t in sorted(self.tasks.items())},
            "adapters": {n: a.to_dict() for n, a in sorted(self.adapters.items())},
            "pending": [dict(p) for p in self.pending],
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported policy state version {data.get('version')!r}")
        return cls(
            tasks={str(n): TaskState.from_dict(t) for n, t in data["tasks"].items()},
            adapters={str(n): AdapterState.from_dict(a) for n, a in data["adapters"].items()},
            pending=[dict(p) for p in data["pending"]],
            seq=int(data["seq"]),
        )

    def copy(self) -> PolicyState:
        """Deep copy (through the JSON form, which also checks it stays serialisable)."""
        return PolicyState.from_dict(self.to_dict())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def adapter_of(self, task: str) -> AdapterState:
        return self.adapters[self.tasks[task].adapter]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def init_state(
    adapters: Mapping[str, Sequence[str]],
    profiles: Mapping[str, TaskProfile],
    config: PolicyConfig,
    *,
    data_sizes: Mapping[str, int] | None = None,
    baselines: Mapping[str, float] | None = None,
) -> PolicyState:
    """Fresh state from the suite: adapters -> tasks, task profiles, seed data sizes.

    Tasks named in no adapter get one of their own.  Ratios start at the temperature prior.
    """
    sizes = dict(data_sizes or {})
    base = dict(baselines or {})
    state = PolicyState()
    assigned: dict[str, str] = {}
    for name, tasks in sorted(adapters.items()):
        for t in tasks:
            if t not in profiles:
                raise ValueError(f"adapter {name!r} names unknown task {t!r}")
            if t in assigned:
                raise ValueError(f"task {t!r} is in adapters {assigned[t]!r} and {name!r}")
            assigned[t] = name
    for t in sorted(profiles):
        if t not in assigned:
            if t in adapters:
                raise ValueError(f"task {t!r} has no adapter and its name is taken")
            assigned[t] = t
    by_adapter: dict[str, list[str]] = {}
    for t, a in assigned.items():
        by_adapter.setdefault(a, []).append(t)
    for a, tasks in sorted(by_adapter.items()):
        tasks.sort()
        weights = prior_ratios({t: sizes.get(t, 0) for t in tasks}, config.ratios)
        state.adapters[a] = AdapterState(tasks=tasks, ratios=RatioState(weights, 1))
    for t, a in sorted(assigned.items()):
        prof = profiles[t]
        state.tasks[t] = TaskState(
            profile=prof,
            adapter=a,
            detector=make_detector(prof, config, base.get(t)),
            window=make_window(prof, config),
            data_size=int(sizes.get(t, 0)),
            mixture=make_mixture_tally(config),
        )
    return state


def sync_state(
    state: PolicyState,
    adapters: Mapping[str, Sequence[str]],
    profiles: Mapping[str, TaskProfile],
    config: PolicyConfig,
    *,
    data_sizes: Mapping[str, int] | None = None,
) -> PolicyState:
    """A copy of ``state`` brought in line with an edited suite.

    Known tasks keep their assignment (forks survive a reload) and statistics; a changed
    risk level rebuilds the task's detector and window with the new thresholds (the baseline
    is kept).  New tasks join the adapter the suite names; removed tasks are dropped.
    """
    new = state.copy()
    fresh = init_state(adapters, profiles, config, data_sizes=data_sizes)
    for t in sorted(set(new.tasks) - set(profiles)):
        a = new.adapters.get(new.tasks[t].adapter)
        if a is not None:
            a.tasks = [x for x in a.tasks if x != t]
            a.ratios = remove_task(a.ratios, t, config.ratios)
        del new.tasks[t]
    for t in sorted(profiles):
        ts = new.tasks.get(t)
        if ts is None:
            ft = fresh.tasks[t]
            a = new.adapters.get(ft.adapter)
            if a is None:
                new.adapters[ft.adapter] = fresh.adapters[ft.adapter]
                new.adapters[ft.adapter].tasks = [t]
                new.adapters[ft.adapter].ratios = RatioState({t: 1.0}, 1)
            else:
                a.tasks = sorted([*a.tasks, t])
                sizes = {x: new.tasks[x].data_size for x in a.tasks if x != t}
                sizes[t] = ft.data_size
                share = prior_ratios(sizes, config.ratios)[t]
                a.ratios = add_task(a.ratios, t, share, config.ratios)
            new.tasks[t] = ft
            continue
        if ts.profile != profiles[t]:
            old_risk = ts.profile.risk
            ts.profile = profiles[t]
            if old_risk != ts.profile.risk:
                ts.detector = make_detector(ts.profile, config, ts.detector.baseline)
                ts.window = make_window(ts.profile, config)
        if data_sizes is not None and t in data_sizes:
            ts.data_size = int(data_sizes[t])
    # Ratios must cover exactly each adapter's tasks: recompute where they do not.
    for a in new.adapters.values():
        if set(a.ratios.weights) != set(a.tasks):
            sizes = {t: new.tasks[t].data_size for t in a.tasks}
            a.ratios = RatioState(prior_ratios(sizes, config.ratios), a.ratios.version + 1)
    for name in [n for n, a in new.adapters.items() if not a.tasks]:
        del new.adapters[name]
    return new


def summarize(state: PolicyState) -> dict[str, dict[str, Any]]:
    """Per task, the numbers ``GET /v1/tasks`` and the Prometheus gauges show (JSON-safe)."""
    out: dict[str, dict[str, Any]] = {}
    for name, ts in sorted(state.tasks.items()):
        ad = state.adapters.get(ts.adapter)
        win, det = ts.window, ts.detector
        out[name] = {
            "risk": ts.profile.risk,
            "tone": ts.profile.tone,
            "adapter": ts.adapter,
            "adapter_version": None if ad is None else ad.version,
            "ratio": None if ad is None else ad.ratios.weights.get(name),
            "ratio_version": None if ad is None else ad.ratios.version,
            "quality": win.acceptance,
            "window_events": win.n,
            "baseline": det.baseline,
            "degraded": det.degraded,
            "crosstalk_rate": win.crosstalk_rate,
            "crosstalk_source": win.dominant_source,
            "crosstalk_sources": win.source_counts(),
            "leaking": win.leaking,
            "isolated_since": ts.isolated_since,
            "forked_from": ts.forked_from,
        }
    return out
