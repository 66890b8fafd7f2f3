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
"""

from __future__ import annotations

from typing import NamedTuple

from policies.config import PolicyConfig
from policies.signals import wilson_lower
from policies.state import PolicyState

__all__ = ["MixtureLeak", "mixture_key", "mixture_leak"]


class MixtureLeak(NamedTuple):
    source: str  # the co-task whose style leaks most
    rate: float  # crosstalk from co-tasks over the tally
    events: int  # events in the tally


def mixture_key(adapter: str, ratio_version: int) -> str:
    """What a tally counts under: the adapter and the ratios its serving version learnt."""
    return f"{adapter}@{ratio_version}"


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
    counts = {s: sum(c.values()) for s, c in tally.source_counts().items() if s in ad.tasks and s != task}
    if not counts:
        return None
    k = sum(counts.values())
    if wilson_lower(k, tally.n, config.fork_leak_z) <= rate_floor:
        return None
    source = max(sorted(counts), key=lambda s: counts[s])
    return MixtureLeak(source, round(k / tally.n, 6), tally.n)
