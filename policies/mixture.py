"""A rebalanced high-risk task's crosstalk tally: evidence that outlives promotions.

The live window (``TaskState.window``) starts afresh at every promotion, so each new
version is measured on its own.  A rare high-risk task in a busy shared adapter then
collects few events per version (1-22 in an ``adaptd demo`` run), so its live window never
reaches ``crosstalk_min_events`` while a third of its answers carry a co-task's style.
So a high-risk task also counts its events in ``TaskState.mixture``, keyed by what its
adapter's serving version learnt (``tally_key``): across retrains on the same ratios, and
from the task's rebalance on across whatever ratios follow (the other tasks' rebalances
change them), until it is rebalanced again, forked or merged.  ``rebalanced_leak`` reads
it: enough evidence of a leak since the rebalance forks the task, the rule its live window
would have applied.
"""

from __future__ import annotations

from typing import NamedTuple

from policies.config import PolicyConfig
from policies.signals import leak_bounds
from policies.state import PolicyState, TaskState

__all__ = ["MixtureLeak", "mixture_key", "rebalanced_leak", "tally_key"]


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


def rebalanced_leak(st: PolicyState, task: str, config: PolicyConfig) -> MixtureLeak | None:
    """The co-task leak of a rebalanced high-risk shared ``task`` since its rebalance, or None.

    Needs the tally to count since the task's rebalance (a version trained on it has
    served), ``crosstalk_min_events`` events in it, and the co-task leak rate's lower bound
    (z = ``fork_leak_z``, false flags discounted: ``leak_bounds``) above the risk level's
    switch-off rate: the tally spans several
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
    lower = leak_bounds(k, n, config.fork_leak_z, config.crosstalk_false_flags)[0]
    if n < config.crosstalk_min_events or not counts or lower <= off:
        return None
    source = max(sorted(counts), key=lambda s: counts[s])
    return MixtureLeak(source, round(k / n, 6), n)
