"""The decision engine: one pure function from (state, signals, time) to decisions.

``decide`` is meant to run on a schedule (Celery beat).  Each run:

1. a merge whose merged version the gate rejected is undone (``policies.merge.unmerge``);
   housekeeping: finished probations expire, healthy tasks forget old failed rebalances,
   isolated tasks track how long they have been compatible with their old adapter;
2. candidates, in priority order rollback > fork > rebalance > merge > retrain (higher risk
   first, then by name, so the result never depends on dict order):

   - rollback: a freshly promoted version accepts significantly less live than the one
     it replaced;
   - fork (task in a shared adapter): still degraded or leaking after
     ``fork_after_rebalances`` rebalances (by default high risk: 1, medium: 2, low: never;
     a low/medium-risk leak must still be significant, its lower bound above the
     switch-off rate; not for a leak whose source is no longer in the adapter, which a fork
     cannot remove, nor for a non-high-risk leak from a compatible co-task, which stays
     shared; a high-risk task's leak also counts when proven over every version served
     since its rebalance, ``policies.mixture.rebalanced_leak``, where each version's own
     window is too short), or ``fork_after_regressions`` consecutive retrains regressed it, or measured
     negative transfer from a co-task (``affinity``: the running TAG estimate);
   - rebalance (shared adapter): a task is degraded (detector alarm) or leaking crosstalk;
   - merge: an isolated task compatible with its old adapter for ``merge_after_s``
     (no affinity below ``-affinity_noise`` either way), its own answers proven clean;
   - retrain: the adapter's tasks buffered ``min_new_examples`` (half that when one of
     them is degraded), or one task buffered its risk level's own ``min_new_examples``
     (by default high risk: 100, so a rare high-risk task's fork keeps learning from its
     feedback);
3. gates: cool-downs, an adapter still waiting for its last job's promotion (for a merge,
   either adapter), a rebalance of
   tasks never forked after rebalances that would move less than ``RatioConfig.min_move`` of
   the mix (its tasks sit at their ratio bounds), the job cap and one action per adapter per
   run; a blocked candidate becomes a ``hold`` (logged once per
   reason, not every run); with ``propose_only_high_risk`` a fork/merge/rollback touching a
   high-risk task becomes a ``proposed`` decision stored in ``state.pending``.

Where the evidence cannot decide yet, the rule waits and says so: a candidate with a
``wait`` becomes a ``hold`` blocked by ``evidence`` (crosstalk flags as frequent as a leak
but too few to prove one, a live drop the rollback test cannot call yet, a merge whose task
is not yet proven clean).

Nothing happens, and nothing is logged, for tasks that are fine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies import gates
from policies.actions import task_numbers
from policies.config import PolicyConfig
from policies.decision import Action, Decision, TaskSignals
from policies.gates import STRUCTURAL, TRAINING, Candidate
from policies.merge import compatible, compatible_with_origin, merge_candidate, unmerge
from policies.mixture import rebalanced_leak
from policies.signals import RISK_LEVELS, leak_bounds, live_regression, pair_verdict
from policies.state import PolicyState, TaskState

__all__ = ["decide"]


def decide(
    state: PolicyState,
    signals: Mapping[str, TaskSignals],
    *,
    now: float,
    config: PolicyConfig,
    running_jobs: int = 0,
    affinity: Mapping[tuple[str, str], float] | None = None,
) -> tuple[PolicyState, list[Decision]]:
    """Decide what to do now.  Returns an updated copy of ``state`` and the decisions.

    ``signals``: per task, buffered new examples and data size (missing tasks: none new).
    ``running_jobs``: training jobs already queued or running.  ``affinity``: TAG-style
    lookahead measurements ``{(i, j): Z[i->j]}`` recorded by the trainer.
    Applied decisions are already reflected in the returned state; enqueue the training
    jobs named in each decision's ``train``.
    """
    st = state.copy()
    aff = dict(affinity or {})
    for t, s in signals.items():
        if t in st.tasks and s.data_size is not None:
            st.tasks[t].data_size = int(s.data_size)
    decisions: list[Decision] = unmerge(st, now, config)
    _housekeeping(st, now, config, aff)
    cands = [
        *_rollbacks(st, now, config),
        *_task_candidates(st, now, config, aff),
        *_retrains(st, signals, config),
    ]
    cands.sort(key=lambda c: c.sort_key(st))
    slots = config.max_concurrent_jobs - running_jobs
    touched: set[str] = set()  # adapters acted on in this run
    acted: set[str] = set()  # tasks with an applied or proposed decision in this run
    held: set[str] = set()  # tasks that already got their hold in this run
    wanted: set[str] = set()  # tasks something was wanted for
    for c in cands:
        wanted.add(c.task)
        if c.adapter in touched or c.target in touched or c.task in acted:
            continue  # one action per adapter and task per run; the rest wait for the next
        blocked = gates.blocked(st, c, now, config, slots)
        if blocked is not None:
            if c.task not in held:
                held.add(c.task)
                hold = gates.hold(st, c, blocked, now)
                if hold is not None:
                    decisions.append(hold)
            continue
        if config.propose_only_high_risk and c.action in STRUCTURAL and c.high_risk:
            decisions.append(gates.propose(st, c, now))
            acted.update(c.tasks)
            continue
        decisions.append(gates.apply(st, c, now, config))
        for t in c.tasks:
            st.tasks[t].last_hold = None
        acted.update(c.tasks)
        touched.update({c.adapter, c.target} - {""})
        if c.action in TRAINING:
            slots -= 1
    for t, ts in st.tasks.items():
        if t not in wanted:
            ts.last_hold = None  # nothing wanted: a later block is news again
    return st, decisions


# -- housekeeping -------------------------------------------------------------------------


def _housekeeping(
    st: PolicyState, now: float, config: PolicyConfig, aff: Mapping[tuple[str, str], float]
) -> None:
    for ad in st.adapters.values():
        if ad.probation is not None and now - ad.probation.since > config.probation_s:
            ad.probation = None  # the new version held up: accepted
        if ad.pending_since is not None and now - ad.pending_since > config.training_timeout_s:
            ad.pending_since = None  # presumed lost; let the policy act again
    for t, ts in st.tasks.items():
        if ts.detector.degraded or ts.window.leaking:
            ts.healthy_since = None
        else:
            ts.healthy_since = now if ts.healthy_since is None else ts.healthy_since
            if now - ts.healthy_since >= config.healthy_reset_s:
                ts.rebalances = 0
                ts.rebalanced_ratio = None
        if compatible_with_origin(st, t, config, aff):
            ts.compatible_since = now if ts.compatible_since is None else ts.compatible_since
        else:
            ts.compatible_since = None


# -- candidates ---------------------------------------------------------------------------


def _higher_risk_first(st: PolicyState) -> Callable[[str], tuple[int, str]]:
    """Sort key over task names: higher risk first, then by name (never dict order)."""
    return lambda t: (-RISK_LEVELS.index(st.tasks[t].profile.risk), t)


def _is_high(st: PolicyState, tasks: list[str]) -> bool:
    return any(st.tasks[t].profile.risk == "high" for t in tasks)


def _rollbacks(st: PolicyState, now: float, config: PolicyConfig) -> list[Candidate]:
    out = []
    for name, ad in sorted(st.adapters.items()):
        prob = ad.probation
        if prob is None:
            continue
        worst: tuple[float, str, dict[str, Any]] | None = None
        # A drop beyond tolerance by at least one standard error that the test cannot call
        # yet (too few events on a side, or short of rollback_z): said, not acted on.
        short: tuple[float, str, dict[str, Any], int] | None = None
        for t in sorted(prob.before):
            if t not in ad.tasks:
                continue
            rp = config.for_risk(st.tasks[t].profile.risk)
            a0, n0 = prob.before[t]
            a1, n1 = prob.after.get(t, [0, 0])
            cmp = live_regression(
                (a0, n0), (a1, n1),
                tolerance=rp.regression_tolerance,
                z_crit=config.rollback_z,
                min_events=config.probation_min_events,
            )  # fmt: skip
            if cmp.regressed and (worst is None or cmp.z > worst[0]):
                worst = (cmp.z, t, cmp.to_dict())
            elif (not cmp.regressed and cmp.drop > rp.regression_tolerance and cmp.z >= 1.0
                  and (short is None or cmp.z > short[0])):
                short = (cmp.z, t, cmp.to_dict(), min(n0, n1))
        if worst is None and short is not None:
            z, t, nums, least = short
            reason = (
                f"{name} v{prob.version} accepts {nums['after_rate']:.1%} of {t} live vs "
                f"{nums['before_rate']:.1%} for v{prob.previous_version}"
            )
            lacks = [f"z={z:.2f} < {config.rollback_z:.2f}"] if z < config.rollback_z else []
            if least < config.probation_min_events:
                lacks.append(f"{least} of {config.probation_min_events} rated answers on the "
                             "smaller side")
            wait = f"not enough evidence of a regression ({', '.join(lacks)})"
            sig = {"live": nums, "version": prob.version, "to_version": prob.previous_version}
            out.append(Candidate("rollback", t, name, reason, sig, list(ad.tasks),
                                 _is_high(st, ad.tasks), to_version=prob.previous_version,
                                 wait=wait))  # fmt: skip
        if worst is not None:
            z, t, nums = worst
            reason = (
                f"{name} v{prob.version} accepts {nums['after_rate']:.1%} of {t} live vs "
                f"{nums['before_rate']:.1%} for v{prob.previous_version} (z={z:.2f})"
            )
            sig = {"live": nums, "version": prob.version, "to_version": prob.previous_version}
            out.append(
                Candidate("rollback", t, name, reason, sig, list(ad.tasks),
                           _is_high(st, ad.tasks), to_version=prob.previous_version)
            )  # fmt: skip
    return out


def _settled(st: PolicyState, ts: TaskState, now: float, config: PolicyConfig) -> bool:
    """Has the last rebalance had its chance (promoted or rejected since, or patience ran
    out)? A rejected rebalance counts: the mixture could not serve this task without
    hurting another, which is the case for a fork."""
    if ts.last_rebalance_at is None:
        return False
    ad = st.adapters[ts.adapter]
    for at in (ad.last_promotion_at, ad.rejected_at):
        if at is not None and at > ts.last_rebalance_at:
            return True
    return now - ts.last_rebalance_at >= config.rebalance_patience_s


def _leak_from_elsewhere(st: PolicyState, task: str) -> bool:
    """Is ``task`` leaking the style of a task that is not (any more) in its adapter?

    Then leaving its co-tasks would not remove the source: the leak comes from what the
    adapter's weights still remember of a task that has been forked out, or from the base
    model. Retraining the adapter on its current mixture is the cure, not a fork."""
    ts = st.tasks[task]
    source = ts.window.dominant_source
    return bool(ts.window.leaking and source and source not in st.adapters[ts.adapter].tasks)


def _fork_worthy(ts: TaskState, config: PolicyConfig) -> bool:
    """Is the task's trouble proven enough to split an adapter for it?

    Degradation is a sequential test already, and so is a leak's latch when it turns on (its
    lower bound above the switch-on rate). The latch then holds until the leak is proven
    gone, so while it is on the leak may have faded: for a high-risk task the latch suffices
    (tight thresholds by design); any other task needs its leak rate's lower bound (false
    flags discounted) above its switch-off rate now."""
    win = ts.window
    if ts.detector.degraded:
        return True
    if not win.leaking:
        return False
    lower = leak_bounds(win.crosstalk, win.n, config.fork_leak_z, config.crosstalk_false_flags)[0]
    return ts.profile.risk == "high" or lower > win.low


def _leak_from_partner(
    st: PolicyState, task: str, config: PolicyConfig, aff: Mapping[tuple[str, str], float]
) -> bool:
    """Is a non-high-risk ``task`` leaking the style of a compatible co-task?

    Compatible tasks (same tone, similar risk, positive measured affinity) stay shared: a
    fork would give up a pair that helps itself to remove a style the
    user barely tells apart. The mixture is the cure. High-risk tasks get no such pass."""
    ts = st.tasks[task]
    source = ts.window.dominant_source
    if ts.profile.risk == "high" or not ts.window.leaking or not source:
        return False
    return source in st.adapters[ts.adapter].tasks and compatible(st, task, source, config, aff)


def _trouble(ts: TaskState) -> str:
    parts = []
    if ts.detector.degraded:
        est = ts.detector.estimated_rate
        base = ts.detector.baseline
        parts.append(
            f"degraded (acceptance ~{est:.1%} vs baseline {base:.1%})"
            if est is not None and base is not None
            else "degraded"
        )
    if ts.window.leaking:
        parts.append(
            f"leaking {ts.window.crosstalk_rate:.1%} crosstalk from {ts.window.dominant_source or '?'}"
        )
    return " and ".join(parts)


def _task_candidates(
    st: PolicyState, now: float, config: PolicyConfig, aff: Mapping[tuple[str, str], float]
) -> list[Candidate]:
    out: list[Candidate] = []
    rebalance: dict[str, list[str]] = {}
    for t, ts in sorted(st.tasks.items()):
        ad = st.adapters[ts.adapter]
        rp = config.for_risk(ts.profile.risk)
        high = ts.profile.risk == "high"
        nums = {"tasks": {t: task_numbers(st, t)}}
        troubled = ts.detector.degraded or ts.window.leaking
        if len(ad.tasks) >= 2:
            reason = None
            limit = rp.fork_after_rebalances
            if limit is not None and ts.rebalances >= limit and _settled(st, ts, now, config):
                if (_fork_worthy(ts, config) and not _leak_from_elsewhere(st, t)
                        and not _leak_from_partner(st, t, config, aff)):
                    reason = (
                        f"{ts.profile.risk}-risk task still {_trouble(ts)} after "
                        f"{ts.rebalances} rebalance(s) of {ts.adapter}"
                    )
                elif (since := rebalanced_leak(st, t, config)) is not None:
                    reason = (
                        f"high-risk task still leaking {since.rate:.1%} crosstalk from co-tasks "
                        f"({since.source} most) over {since.events} events since its "
                        f"rebalance of {ts.adapter}"
                    )
            regs = rp.fork_after_regressions
            if reason is None and regs is not None and ts.regressions >= regs:
                reason = (
                    f"regressed in {ts.regressions} consecutive retrains of {ts.adapter} "
                    "that did not target it"
                )
            if reason is None:
                reason = _negative_transfer(st, t, config, aff, nums)
            if reason is not None:
                out.append(Candidate("fork", t, ts.adapter, reason, nums, [t], high))
            elif troubled:
                rebalance.setdefault(ts.adapter, []).append(t)
            elif ts.window.evidence_short:
                out.append(_leak_wait(st, t, "rebalance", nums))
        elif troubled and ad.version is not None and ad.pending_since is None:
            # Alone in its adapter: there is no mixture to rebalance and no one to fork away
            # from. More training on its own data (rejected outputs as negatives) is the cure.
            # (Not while its first version, e.g. a fork's, is still on the way.)
            out.append(Candidate("retrain", t, ts.adapter, f"{t} {_trouble(ts)} in its own "
                                  f"adapter {ts.adapter}", nums, [t], high))  # fmt: skip
        elif ts.window.evidence_short and ad.version is not None and ad.pending_since is None:
            out.append(_leak_wait(st, t, "retrain", nums))
        merge = merge_candidate(st, t, now, config, nums)
        if merge is not None:
            out.append(merge)
    for name, tasks in rebalance.items():
        tasks.sort(key=_higher_risk_first(st))
        reason = "; ".join(f"{x} {_trouble(st.tasks[x])}" for x in tasks)
        out.append(Candidate("rebalance", tasks[0], name, reason, {}, tasks, _is_high(st, tasks)))
    return out


def _leak_wait(st: PolicyState, task: str, action: Action, nums: dict[str, Any]) -> Candidate:
    """The ``action`` a leak would ask for, held: the window's flags are as frequent as a
    leak but too few to prove one (``CrosstalkWindow.evidence_short``)."""
    ts = st.tasks[task]
    win = ts.window
    reason = (f"crosstalk {win.crosstalk}/{win.n} in {task}'s window "
              f"({win.crosstalk_rate:.1%}, most from {win.dominant_source})")
    wait = (f"not enough evidence of a leak (lower bound {win.leak_lower:.1%} <= "
            f"{win.high:.1%})")
    sig = {**nums, "leak_bounds": [round(win.leak_lower, 6), round(win.leak_upper, 6)]}
    return Candidate(action, task, ts.adapter, reason, sig, [task], ts.profile.risk == "high",
                     wait=wait)


def _negative_transfer(
    st: PolicyState,
    task: str,
    config: PolicyConfig,
    aff: Mapping[tuple[str, str], float],
    nums: dict[str, Any],
) -> str | None:
    ts = st.tasks[task]
    others = [o for o in st.adapters[ts.adapter].tasks if o != task]
    profiles = {t: st.tasks[t].profile for t in [*others, task]}
    for o in others:
        v = pair_verdict(task, o, profiles, aff, max_negative=config.max_negative())
        if v.verdict == "incompatible" and v.victim == task:
            nums["affinity"] = {o: aff.get((o, task)), "limit": config.max_negative()[ts.profile.risk]}
            return f"negative transfer: {v.reasons[0]}"
    return None


def _retrains(st: PolicyState, signals: Mapping[str, TaskSignals], config: PolicyConfig) -> list[Candidate]:
    out = []
    for name, ad in sorted(st.adapters.items()):
        if not ad.tasks:
            continue
        new = {t: signals[t].new_examples if t in signals else 0 for t in ad.tasks}
        total = sum(new.values())
        degraded = [t for t in ad.tasks if st.tasks[t].detector.degraded]
        need = config.min_new_examples // 2 if degraded else config.min_new_examples
        own = _own_threshold_met(st, new, config)
        if total >= max(need, 1):
            primary = max(sorted(new), key=lambda t: new[t])
            reason = f"{total} new examples for {name} (threshold {need})"
        elif own is not None:
            primary, risk, limit = own
            reason = f"{new[primary]} new examples for {primary} ({risk}-risk threshold {limit})"
        else:
            continue
        if degraded:
            reason += f"; degraded: {', '.join(degraded)}"
        out.append(Candidate("retrain", primary, name, reason, {"new_examples": new},
                              list(ad.tasks)))  # fmt: skip
    return out


def _own_threshold_met(
    st: PolicyState, new: Mapping[str, int], config: PolicyConfig
) -> tuple[str, str, int] | None:
    """(task, risk, threshold) of the first task (higher risk first, then by name) whose own
    new examples reached its risk level's ``min_new_examples``; None if none did."""
    for t in sorted(new, key=_higher_risk_first(st)):
        risk = st.tasks[t].profile.risk
        limit = config.for_risk(risk).min_new_examples
        if limit is not None and new[t] >= limit:
            return t, risk, limit
    return None
