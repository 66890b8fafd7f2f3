"""Feeding facts into the policy state: feedback events, promotions, eval results.

``observe`` is the hot path (one call per feedback event) and updates the state **in place**
(and returns it).  The others are rare and return an updated **copy**, leaving their input
untouched.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from policies.config import PolicyConfig
from policies.mixture import tally_key
from policies.signals import eval_regressions
from policies.state import PolicyState, Probation
from policies.windows import Origin

__all__ = ["clear_pending", "observe", "observe_unrated", "on_promotion", "on_rejection",
           "record_eval"]


def observe(
    state: PolicyState,
    task: str,
    accepted: bool,
    *,
    crosstalk_source: str | None = None,
    origin: Origin = "user",
    adapter: str | None = None,
    version: int | None = None,
) -> PolicyState:
    """Count one feedback event of ``task`` (in place; returns ``state``).

    ``accepted`` is the verdict (an ``edit`` counts as not accepted).  ``crosstalk_source``
    names the task whose style leaked into the output, flagged by the user or by the style
    detector (``origin``).  ``adapter``/``version`` say what produced the output; when given,
    events from anything but the task's current adapter version do not count towards the
    live comparison that can trigger a rollback.  A high-risk task's event also enters its
    mixture tally (``policies.mixture.rebalanced_leak`` reads it).

    >>> from policies.config import PolicyConfig
    >>> from policies.signals import TaskProfile
    >>> from policies.state import init_state
    >>> cfg = PolicyConfig()
    >>> st = init_state({"shared": ["a", "b"]}, {"a": TaskProfile(), "b": TaskProfile()}, cfg)
    >>> for _ in range(3):
    ...     _ = observe(st, "a", False, crosstalk_source="b", origin="auto")
    >>> st.tasks["a"].window.crosstalk_rate, st.tasks["a"].window.dominant_source
    (1.0, 'b')
    """
    ts = state.tasks.get(task)
    if ts is None:
        raise KeyError(f"unknown task {task!r}")
    if crosstalk_source == task:
        crosstalk_source = None  # a task's own style is not crosstalk
    ts.detector.update(accepted)
    ts.window.update(accepted, crosstalk_source, origin)
    if ts.profile.risk == "high":
        ts.mixture.update(accepted, crosstalk_source, origin)
    ad = state.adapters.get(ts.adapter)
    if ad is not None and ad.probation is not None:
        same_adapter = adapter is None or adapter == ts.adapter
        same_version = version is None or version == ad.probation.version
        if same_adapter and same_version:
            counts = ad.probation.after.setdefault(task, [0, 0])
            counts[0] += bool(accepted)
            counts[1] += 1
    return state


def observe_unrated(
    state: PolicyState,
    task: str,
    *,
    checked: bool,
    crosstalk_source: str | None = None,
) -> PolicyState:
    """Count one answer of ``task`` that the app served and nobody rated (in place).

    Silence is no verdict: the answer never reaches the degradation detector, the live
    comparison of a probation or the training data. What it can show is crosstalk, and only
    through the automatic style detector: ``checked`` says the detector looked at it, and
    ``crosstalk_source`` is the task whose style it found (origin ``auto``). A checked answer
    enters the task's window and a high-risk task's mixture tally as one more answer, with or
    without crosstalk, so a rare task's leak is measured over every answer it served. An
    unchecked one changes nothing: counted in the window it would only dilute the rate the
    users' flags give.

    >>> from policies.config import PolicyConfig
    >>> from policies.signals import TaskProfile
    >>> from policies.state import init_state
    >>> cfg = PolicyConfig()
    >>> st = init_state({"shared": ["a", "b"]}, {"a": TaskProfile(), "b": TaskProfile()}, cfg)
    >>> _ = observe(st, "a", True)
    >>> for i in range(3):
    ...     _ = observe_unrated(st, "a", checked=True, crosstalk_source="b" if i else None)
    >>> _ = observe_unrated(st, "a", checked=False)
    >>> w = st.tasks["a"].window
    >>> w.n, w.rated, w.acceptance, w.source_counts()
    (4, 1, 1.0, {'b': {'user': 0, 'auto': 2}})
    """
    ts = state.tasks.get(task)
    if ts is None:
        raise KeyError(f"unknown task {task!r}")
    if not checked:
        return state
    if crosstalk_source == task:
        crosstalk_source = None
    ts.window.update(None, crosstalk_source, "auto")
    if ts.profile.risk == "high":
        ts.mixture.update(None, crosstalk_source, "auto")
    return state


def on_promotion(
    state: PolicyState,
    adapter: str,
    *,
    version: int,
    now: float,
    config: PolicyConfig,
    baselines: Mapping[str, float | None] | None = None,
) -> PolicyState:
    """A copy of ``state`` after ``adapter`` version ``version`` passed the eval gate.

    Each task of the adapter gets a fresh detector against its baseline and a fresh window
    (the new version is measured on its own).  ``baselines[task]`` sets the baseline, on the
    scale of live ratings (the users' false rejects and accepts included: an eval's noise-free
    score would read a steady 5 % false-reject rate as a drop); missing or ``None`` keeps the
    task's current baseline, because the quality bar must not sink just because a version was
    promoted while degraded, and a task without one warms up on live ratings.  A probation
    compares the new version's live acceptance with the old one's until
    ``config.probation_s`` has passed (rollback).
    """
    new = state.copy()
    ad = new.adapters.get(adapter)
    if ad is None:
        raise KeyError(f"unknown adapter {adapter!r}")
    base = dict(baselines or {})
    prev = ad.version
    if prev is not None and prev != version:
        ad.probation = Probation(
            since=now,
            version=version,
            previous_version=prev,
            before={t: [new.tasks[t].window.accepted, new.tasks[t].window.rated]
                    for t in ad.tasks},
        )
    else:
        ad.probation = None
    ad.version = version
    ad.pending_since = None
    ad.merging = {}  # a merged version serves: the merges are done
    ad.retry_at_data = None
    ad.last_promotion_at = now
    ad.cooldown_until = max(ad.cooldown_until, now + config.cooldown_s)
    for t in ad.tasks:
        ts = new.tasks[t]
        given = base.get(t)
        ts.detector.reset(ts.detector.baseline if given is None else given)
        ts.window.reset()
        ts.last_hold = None
        # The mixture tally goes on across retrains on the same ratios, and a rebalanced
        # high-risk task's across any ratios that follow its rebalance (policies.mixture).
        key = tally_key(adapter, ad.ratios.version, ts)
        if ts.mixture_of != key:
            ts.mixture.reset()
            ts.mixture_of = key
    return new


def record_eval(
    state: PolicyState,
    adapter: str,
    *,
    before: Mapping[str, float],
    after: Mapping[str, float],
    config: PolicyConfig,
    targeted: Collection[str] = (),
    se: Mapping[str, float | None] | None = None,
) -> tuple[PolicyState, dict[str, float]]:
    """Record a retrain's eval (scores per task, higher is better) before and after.

    Returns the updated copy and ``{task: drop}`` for the adapter's tasks the retrain made
    worse beyond their risk level's tolerance although it was not aimed at them
    (``targeted``: the decision's ``signals["targeted"]``).  Such a task's consecutive
    regression count grows (enough of them fork it); a clean eval resets it; the eval of a
    version that merges a task in changes no count.  With ``se``
    (per task, standard error of the paired score difference) a drop must also be
    significant, ``config.regression_z`` standard errors (see ``eval_regressions``).
    """
    new = state.copy()
    ad = new.adapters.get(adapter)
    if ad is None:
        raise KeyError(f"unknown adapter {adapter!r}")
    tol = {t: config.for_risk(new.tasks[t].profile.risk).regression_tolerance for t in ad.tasks}
    regressed = eval_regressions(
        {t: v for t, v in before.items() if t in tol},
        {t: v for t, v in after.items() if t in tol},
        targeted=targeted,
        tolerance=tol,
        se=se,
        z=config.regression_z,
    )
    if ad.merging:
        # The version that merges a task in: what it costs the tasks already there is the
        # merge's cost, judged by the gate, and an undone merge (``unmerge``) must not leave
        # them a step closer to a fork of their own.
        return new, regressed
    for t in ad.tasks:
        if t in targeted or t not in before or t not in after:
            continue
        ts = new.tasks[t]
        ts.regressions = ts.regressions + 1 if t in regressed else 0
    return new, regressed


def clear_pending(state: PolicyState, adapter: str) -> PolicyState:
    """A copy where ``adapter`` no longer waits for a promotion (its job failed), so the
    policy may act on it again."""
    new = state.copy()
    ad = new.adapters.get(adapter)
    if ad is None:
        raise KeyError(f"unknown adapter {adapter!r}")
    ad.pending_since = None
    return new


def on_rejection(state: PolicyState, adapter: str, *, now: float, config: PolicyConfig) -> PolicyState:
    """A copy after the eval gate turned down ``adapter``'s new version.

    The adapter trains again (retrain or rebalance) only once its tasks' data has grown by
    ``config.min_new_examples`` or by ``config.retry_growth`` of its size, whichever comes
    first: a candidate from the same data would mostly meet the same verdict, and a leak that
    keeps asking for a rebalance must not become a loop of rejected jobs. (The fraction keeps
    a small adapter, e.g. a rare forked task, from waiting thousands of requests.)
    A rejected rebalance has had its chance: a task still in trouble may now be forked
    (see the engine's ``fork_after_rebalances``). Rollbacks and forks are not held back, and
    a fork out of the adapter lifts the wait: its next version is another mixture. A task
    merged in by the rejected version's job goes back to the adapter it left.
    """
    new = clear_pending(state, adapter)
    ad = new.adapters[adapter]
    size = ad.data_size(new.tasks)
    ad.retry_at_data = size + min(config.min_new_examples,
                                  max(1, math.ceil(config.retry_growth * size)))
    ad.rejected_at = now
    for parked in ad.merging.values():
        parked["rejected"] = True  # the engine undoes the merge (policies.merge.unmerge)
    return new
