"""A task's crosstalk under its adapter's current mixture: evidence that outlives promotions.

The live window (``TaskState.window``) starts afresh at every promotion, so each new
version is measured on its own.  A rare task in a busy shared adapter then collects few
events per version: in the long-after loop runs festival_wish saw 8-121 events per version
of the shared adapter after the holiday phase (``feedback_event`` grouped by ``adapter``),
often fewer than the default ``crosstalk_min_events`` of 50, so a steady 3-5 % leak is
never judged.  A retrain on the same ratios changes the weights but not what the mixture
teaches, so ``TaskState.mixture`` keeps counting across such promotions and starts afresh
only when a version trained on other ratios (or in another adapter) starts serving.

``mixture_leak`` reads it: is a task that stays shared leaking the style of a co-task,
significantly above ``PolicyConfig.mixture_leak_rate``?  The cure is the mixture
(``apply_rebalance`` raises the task and lowers the source), never a fork.

Off by default: measured on the long-after scenario it did not close festival_wish's gap
(README, "The loop"), because that leak comes from several tasks, forked ones included.

``rebalanced_leak`` reads the same tally for a high-risk task after a rebalance for its
leak: is it still leaking, over all the versions served since the first one trained on
that rebalance?  A rare high-risk task in a busy shared adapter saw 1-22 events per
version there (an ``adaptd demo`` run, README), so its live window never reached
``crosstalk_min_events`` while a third of its answers carried a co-task's style; keeping
the tally only across retrains on the same ratios did not help either, because the other
tasks' rebalances change the ratios.  So from the task's rebalance on, its tally counts
whatever ratios follow (``tally_key``), until it is rebalanced again, forked or merged.
Enough evidence forks it, the rule its live window would have applied.
"""

from __future__ import annotations

from typing import NamedTuple

from policies.config import PolicyConfig
from policies.signals import wilson_lower
from policies.state import PolicyState, TaskState

__all__ = ["MixtureLeak", "mixture_key", "mixture_leak", "rebalanced_leak", "tally_key"]


class MixtureLeak(NamedTuple):
    source: str  # the co-task whose style leaks most
    rate: float  # crosstalk from co-tasks over the tally
    events: int  # events in the tally


def mixture_key(adapter: str, ratio_version: int) -> str:
    """What a tally counts under: the adapter and the ratios its serving version learnt."""
    return f"{adapter}@{ratio_version}"


def tally_key(adapter: str, ratio_version: int, ts: TaskState) -> str:
    """What ``ts``'s tally counts under when ``adapter`` on ``ratio_version`` serves it.

    >>> from policies.detectors import DegradationDetector
    >>> from policies.signals import TaskProfile
    >>> from policies.windows import CrosstalkWindow
    >>> ts = TaskState(TaskProfile(risk="high"), "shared", DegradationDetector(),
    ...                CrosstalkWindow())
    >>> tally_key("shared", 3, ts)
    'shared@3'
    >>> ts.rebalanced_ratio = 4  # its rebalance made ratios 4: counted from there on
    >>> tally_key("shared", 3, ts), tally_key("shared", 4, ts), tally_key("shared", 6, ts)
    ('shared@3', 'shared@4+', 'shared@4+')
    """
    since = ts.rebalanced_ratio
    if ts.profile.risk == "high" and since is not None and ratio_version >= since:
        return mixture_key(adapter, since) + "+"
    return mixture_key(adapter, ratio_version)


def _co_task_counts(st: PolicyState, task: str) -> dict[str, int]:
    """Crosstalk in ``task``'s tally by source, for sources still in its adapter."""
    ts = st.tasks[task]
    tasks = st.adapters[ts.adapter].tasks
    return {s: sum(c.values()) for s, c in ts.mixture.source_counts().items()
            if s in tasks and s != task}


def mixture_leak(st: PolicyState, task: str, config: PolicyConfig) -> MixtureLeak | None:
    """The significant co-task leak of a non-high-risk shared ``task``, or ``None``.

    Counts only sources still in the task's adapter (a rebalance cannot remove the style of
    a task that has left); needs ``crosstalk_min_events`` events and the co-task rate's
    Wilson lower bound (z = ``fork_leak_z``) above ``mixture_leak_rate``.  High-risk tasks
    are left to their own tight window and fork rule.

    >>> from policies.events import observe
    >>> from policies.signals import TaskProfile
    >>> from policies.state import init_state
    >>> cfg = PolicyConfig(mixture_leak_rate=0.02)
    >>> st = init_state({"shared": ["a", "b"]}, {"a": TaskProfile(), "b": TaskProfile()}, cfg)
    >>> for i in range(200):
    ...     _ = observe(st, "a", i % 10 != 0, crosstalk_source="b" if i % 10 == 0 else None)
    >>> mixture_leak(st, "a", cfg)
    MixtureLeak(source='b', rate=0.1, events=200)
    >>> mixture_leak(st, "a", PolicyConfig(mixture_leak_rate=None)) is None
    True
    """
    rate_floor = config.mixture_leak_rate
    ts = st.tasks[task]
    ad = st.adapters.get(ts.adapter)
    if rate_floor is None or ad is None or len(ad.tasks) < 2 or ts.profile.risk == "high":
        return None
    tally = ts.mixture
    if tally.n < config.crosstalk_min_events:
        return None
    counts = _co_task_counts(st, task)
    if not counts:
        return None
    k = sum(counts.values())
    if wilson_lower(k, tally.n, config.fork_leak_z) <= rate_floor:
        return None
    source = max(sorted(counts), key=lambda s: counts[s])
    return MixtureLeak(source, round(k / tally.n, 6), tally.n)


def rebalanced_leak(st: PolicyState, task: str, config: PolicyConfig) -> MixtureLeak | None:
    """The co-task leak of a rebalanced high-risk shared ``task`` since its rebalance, or None.

    Needs the tally to count since the task's rebalance (a version trained on it has
    served), ``crosstalk_min_events`` events in it, and the co-task rate's Wilson lower bound
    (z = ``fork_leak_z``) above the risk level's switch-off rate: the tally spans several
    versions, so the leak must be proven, not just latched.  Sources no longer in the
    adapter do not count (a fork cannot remove them).

    >>> from policies.events import observe, on_promotion
    >>> from policies.signals import TaskProfile
    >>> from policies.state import init_state
    >>> cfg = PolicyConfig()
    >>> profiles = {"h": TaskProfile(risk="high"), "g": TaskProfile()}
    >>> st = init_state({"shared": ["g", "h"]}, profiles, cfg)
    >>> st.tasks["h"].rebalanced_ratio = st.adapters["shared"].ratios.version
    >>> for v in range(1, 6):  # five versions, 12 events each: 3 in a co-task's style
    ...     st = on_promotion(st, "shared", version=v, now=0.0, config=cfg)
    ...     for i in range(12):
    ...         _ = observe(st, "h", i % 4 != 0, crosstalk_source="g" if i % 4 == 0 else None)
    >>> st.tasks["h"].window.n, st.tasks["h"].window.leaking  # the live window: too few
    (12, False)
    >>> rebalanced_leak(st, "h", cfg)
    MixtureLeak(source='g', rate=0.25, events=60)
    """
    ts = st.tasks[task]
    ad = st.adapters.get(ts.adapter)
    # The tally counts since the rebalance when it is keyed as tally_key says it should be.
    if (ts.profile.risk != "high" or ad is None or len(ad.tasks) < 2
            or ts.rebalanced_ratio is None
            or ts.mixture_of != tally_key(ts.adapter, ad.ratios.version, ts)):
        return None
    n = ts.mixture.n
    counts = _co_task_counts(st, task)
    k = sum(counts.values())
    off = config.for_risk("high").crosstalk_off
    if n < config.crosstalk_min_events or not counts or wilson_lower(k, n, config.fork_leak_z) <= off:
        return None
    source = max(sorted(counts), key=lambda s: counts[s])
    return MixtureLeak(source, round(k / n, 6), n)
