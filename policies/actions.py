"""Applying actions to a policy state, and the operator's side: approve, reject, override.

The ``apply_*`` helpers change the state they are given **in place** and return the
``Decision`` describing the change; ``decide``, ``approve``, ``reject`` and ``override``
call them on a copy, so their callers never see a half-updated state.
"""

from __future__ import annotations

from typing import Any

from policies.config import PolicyConfig
from policies.decision import Action, Decision
from policies.ratios import RatioState, add_task, prior_ratios, remove_task, update_ratios
from policies.state import AdapterState, PolicyState

__all__ = [
    "apply_fork",
    "apply_merge",
    "apply_rebalance",
    "apply_retrain",
    "apply_rollback",
    "approve",
    "audit_flags",
    "isolated_adapter_name",
    "override",
    "rebalance_move",
    "rebalance_pressure",
    "reject",
    "task_numbers",
]


def task_numbers(st: PolicyState, task: str) -> dict[str, Any]:
    """The live numbers of one task, as stored with every decision about it."""
    ts = st.tasks[task]
    det, win = ts.detector, ts.window
    return {
        "risk": ts.profile.risk,
        "acceptance": None if win.acceptance is None else round(win.acceptance, 6),
        "window_events": win.n,
        "baseline": det.baseline,
        "degraded": det.degraded,
        "estimated_rate": det.estimated_rate,
        "evidence": round(det.evidence, 6),
        "crosstalk_rate": round(win.crosstalk_rate, 6),
        "crosstalk_source": win.dominant_source,
        "leaking": win.leaking,
        "mixture_events": ts.mixture.n,
        "mixture_crosstalk_rate": round(ts.mixture.crosstalk_rate, 6),
        "rebalances": ts.rebalances,
        "regressions": ts.regressions,
    }


def audit_flags(st: PolicyState, adapter: str, config: PolicyConfig) -> list[str]:
    """The tasks of ``adapter`` whose windowed crosstalk rate reached their risk's
    ``audit_at``: its next training run self-audits them whatever their risk.

    >>> from policies.events import observe
    >>> from policies.signals import TaskProfile
    >>> from policies.state import init_state
    >>> cfg = PolicyConfig()
    >>> st = init_state({"shared": ["fw", "gr"]}, {"fw": TaskProfile(), "gr": TaskProfile()}, cfg)
    >>> for i in range(100):  # fw: one answer in 25 in gr's style; gr clean
    ...     _ = observe(st, "fw", i % 25 != 0, crosstalk_source="gr" if i % 25 == 0 else None)
    ...     _ = observe(st, "gr", True)
    >>> audit_flags(st, "shared", cfg)
    ['fw']
    """
    out = []
    for t in st.adapters[adapter].tasks:
        win = st.tasks[t].window
        at = config.for_risk(st.tasks[t].profile.risk).audit_at
        if at is not None and win.n >= config.crosstalk_min_events and win.crosstalk_rate >= at:
            out.append(t)
    return sorted(out)


def _start_training(ad: AdapterState, now: float, config: PolicyConfig) -> None:
    ad.pending_since = now
    ad.cooldown_until = max(ad.cooldown_until, now + config.cooldown_s)


def rebalance_pressure(
    st: PolicyState, adapter: str, affected: list[str], config: PolicyConfig
) -> tuple[dict[str, float], list[str]]:
    """What a rebalance of ``affected`` would do to ``adapter``'s mix: the pressure on each
    task's ratio (raise the affected, lower their crosstalk sources) and the affected tasks
    for which it counts towards a fork. Reads the state, changes nothing."""
    ad = st.adapters[adapter]
    pressure: dict[str, float] = {}
    counted: list[str] = []
    for t in affected:
        ts = st.tasks[t]
        rp = config.for_risk(ts.profile.risk)
        sev = 0.5  # an affected task always gets at least half a step
        det, win = ts.detector, ts.window
        if det.degraded and det.baseline is not None and win.acceptance is not None:
            sev = max(sev, min(1.0, (det.baseline - win.acceptance) / (2.0 * rp.min_drop)))
        leak = min(1.0, win.crosstalk_rate / (2.0 * rp.crosstalk_on))
        sev = max(sev, leak)
        pressure[t] = pressure.get(t, 0.0) + sev
        src = win.dominant_source if win.leaking else None
        if src is not None and src in ad.tasks and src not in affected:
            pressure[src] = pressure.get(src, 0.0) - max(0.5, leak)
        counted.append(t)  # an operator's rebalance of a healthy task counts too
    return pressure, counted


def rebalance_move(
    st: PolicyState, adapter: str, pressure: dict[str, float], config: PolicyConfig
) -> tuple[float, RatioState]:
    """How much of ``adapter``'s mix a rebalance with ``pressure`` (``rebalance_pressure``)
    would move, and the ratios it would set. The move is the total variation distance
    between those ratios and the ones an update without pressure gives (the current ratios
    brought inside today's bounds), so what counts is the rebalance's own doing, not the
    anchor following the data sizes. Near zero when the raised tasks sit at their ceilings
    and their sources at their floors: the mixture has nothing left to give
    (``RatioConfig.min_move``)."""
    ad = st.adapters[adapter]
    # Anchored to the prior over today's data sizes (RatioConfig.max_drift): without it the
    # steps of many rebalances add up and starve a task nobody raises.
    sizes = {t: st.tasks[t].data_size for t in ad.tasks}
    new = update_ratios(ad.ratios, pressure, config.ratios, sizes=sizes)
    still = update_ratios(ad.ratios, {}, config.ratios, sizes=sizes)
    move = 0.5 * sum(abs(new.weights[t] - still.weights[t]) for t in new.weights)
    return move, new


def apply_rebalance(
    st: PolicyState,
    adapter: str,
    affected: list[str],
    *,
    now: float,
    config: PolicyConfig,
    reason: str,
) -> Decision:
    """Raise the affected tasks' ratios, lower their crosstalk sources', then retrain."""
    ad = st.adapters[adapter]
    pressure, counted = rebalance_pressure(st, adapter, affected, config)
    move, ad.ratios = rebalance_move(st, adapter, pressure, config)
    for t in counted:  # see policies.mixture.rebalanced_leak
        st.tasks[t].rebalances += 1
        st.tasks[t].last_rebalance_at = now
        st.tasks[t].rebalanced_ratio = ad.ratios.version
    _start_training(ad, now, config)
    signals = {
        "tasks": {t: task_numbers(st, t) for t in affected},
        "pressure": {t: round(p, 6) for t, p in sorted(pressure.items())},
        "move": round(move, 6),
        "targeted": sorted(affected),
        "audit": audit_flags(st, adapter, config),
    }
    return Decision(
        st.next_seq(), now, "rebalance", affected[0], adapter, reason, signals,
        ratios=dict(ad.ratios.weights), ratio_version=ad.ratios.version, train=(adapter,),
    )  # fmt: skip


def apply_retrain(
    st: PolicyState,
    adapter: str,
    task: str,
    *,
    now: float,
    config: PolicyConfig,
    reason: str,
    signals: dict[str, Any],
) -> Decision:
    ad = st.adapters[adapter]
    _start_training(ad, now, config)
    return Decision(
        st.next_seq(), now, "retrain", task, adapter, reason,
        {**signals, "targeted": [], "audit": audit_flags(st, adapter, config)},
        ratios=dict(ad.ratios.weights), ratio_version=ad.ratios.version, train=(adapter,),
    )  # fmt: skip


def isolated_adapter_name(st: PolicyState, task: str) -> str:
    """The adapter a forked task gets: its own name, or ``name-2``, ``-3``... if taken."""
    if task not in st.adapters:
        return task
    k = 2
    while f"{task}-{k}" in st.adapters:
        k += 1
    return f"{task}-{k}"


def apply_fork(
    st: PolicyState,
    task: str,
    *,
    now: float,
    config: PolicyConfig,
    reason: str,
    signals: dict[str, Any],
) -> Decision:
    """Move ``task`` out of its shared adapter into a new adapter of its own."""
    ts = st.tasks[task]
    src_name = ts.adapter
    src = st.adapters[src_name]
    if len(src.tasks) < 2:
        raise ValueError(f"task {task!r} already has adapter {src_name!r} to itself")
    name = isolated_adapter_name(st, task)
    src.tasks = [t for t in src.tasks if t != task]
    src.ratios = remove_task(src.ratios, task, config.ratios)
    # A rejected version's wait for new data (``on_rejection``) was about a mixture that held
    # the forked task; what the adapter trains next is another mixture, and a leak its served
    # version keeps from the forked task must not wait for the feedback of thousands of
    # requests when users rate a few percent of answers.
    src.retry_at_data = None
    iso = AdapterState(tasks=[task], ratios=RatioState({task: 1.0}, 1))
    _start_training(iso, now, config)
    st.adapters[name] = iso
    ts.adapter = name
    ts.forked_from = src_name
    ts.isolated_since = now
    ts.compatible_since = None
    ts.rebalances = 0
    ts.rebalanced_ratio = None
    ts.regressions = 0
    ts.cooldown_until = now + config.structural_cooldown_s
    sig = {**signals, "from_adapter": src_name, "source_ratios": dict(src.ratios.weights),
           "audit": audit_flags(st, name, config)}
    return Decision(
        st.next_seq(), now, "fork", task, name, reason, sig,
        ratios={task: 1.0}, ratio_version=1, train=(name,),
    )  # fmt: skip


def apply_merge(
    st: PolicyState,
    task: str,
    target: str,
    *,
    now: float,
    config: PolicyConfig,
    reason: str,
    signals: dict[str, Any],
) -> Decision:
    """Move an isolated ``task`` back into ``target`` and retrain ``target``."""
    ts = st.tasks[task]
    old = ts.adapter
    if target not in st.adapters or target == old:
        raise ValueError(f"cannot merge {task!r} into {target!r}")
    if len(st.adapters[old].tasks) != 1:
        raise ValueError(f"task {task!r} is not isolated")
    ad = st.adapters[target]
    sizes = {t: st.tasks[t].data_size for t in ad.tasks}
    sizes[task] = ts.data_size
    share = prior_ratios(sizes, config.ratios)[task]
    ad.tasks = sorted([*ad.tasks, task])
    ad.ratios = add_task(ad.ratios, task, share, config.ratios)
    _start_training(ad, now, config)
    # The isolated adapter keeps serving until ``target`` is retrained and promoted; the
    # policy no longer manages it, but keeps it to go back to if the gate rejects the merge.
    ad.merging[task] = {"adapter": old, "state": st.adapters.pop(old).to_dict(),
                        "isolated_since": ts.isolated_since, "rejected": False}
    ts.adapter = target
    ts.forked_from = None
    ts.isolated_since = None
    ts.compatible_since = None
    ts.rebalances = 0
    ts.rebalanced_ratio = None
    ts.regressions = 0
    ts.cooldown_until = now + config.structural_cooldown_s
    return Decision(
        st.next_seq(), now, "merge", task, target, reason,
        {**signals, "from_adapter": old, "targeted": [task],
         "audit": audit_flags(st, target, config)},
        ratios=dict(ad.ratios.weights), ratio_version=ad.ratios.version, train=(target,),
    )  # fmt: skip


def apply_rollback(
    st: PolicyState,
    adapter: str,
    task: str,
    to_version: int,
    *,
    now: float,
    config: PolicyConfig,
    reason: str,
    signals: dict[str, Any],
) -> Decision:
    """Serve ``to_version`` of ``adapter`` again; its tasks are measured afresh."""
    ad = st.adapters[adapter]
    ad.version = to_version
    ad.probation = None
    ad.cooldown_until = max(ad.cooldown_until, now + config.cooldown_s)
    for t in ad.tasks:
        tsk = st.tasks[t]
        tsk.detector.reset(tsk.detector.baseline)
        tsk.window.reset()
        tsk.mixture.reset()  # which ratios the old version learnt is not known here
        tsk.mixture_of = None
    st.tasks[task].cooldown_until = now + config.structural_cooldown_s
    return Decision(
        st.next_seq(), now, "rollback", task, adapter, reason, {**signals, "to_version": to_version}
    )


def _apply(st: PolicyState, d: Decision, *, now: float, config: PolicyConfig, reason: str) -> Decision:
    """Apply a (proposed or requested) decision's action to ``st``."""
    sig = dict(d.signals)
    if d.action == "fork":
        return apply_fork(st, d.task, now=now, config=config, reason=reason, signals=sig)
    if d.action == "merge":
        return apply_merge(st, d.task, d.adapter, now=now, config=config, reason=reason, signals=sig)
    if d.action == "rollback":
        to = int(sig["to_version"])
        return apply_rollback(st, d.adapter, d.task, to, now=now, config=config, reason=reason, signals=sig)
    if d.action == "rebalance":
        return apply_rebalance(st, d.adapter, [d.task], now=now, config=config, reason=reason)
    if d.action == "retrain":
        return apply_retrain(st, d.adapter, d.task, now=now, config=config, reason=reason, signals=sig)
    raise ValueError(f"cannot apply {d.action!r}")


def _take_pending(st: PolicyState, seq: int) -> Decision:
    for i, p in enumerate(st.pending):
        if int(p["seq"]) == seq:
            del st.pending[i]
            return Decision.from_dict(p)
    raise KeyError(f"no pending proposal #{seq}")


def approve(
    state: PolicyState, seq: int, *, now: float, config: PolicyConfig
) -> tuple[PolicyState, Decision]:
    """Apply pending proposal ``seq`` (operator approved); returns a copy and the decision.

    Raises ``KeyError`` if no such proposal and ``ValueError`` if it no longer applies (e.g.
    the task was already forked by an override).
    """
    st = state.copy()
    prop = _take_pending(st, seq)
    d = _apply(st, prop, now=now, config=config, reason=f"approved #{seq}: {prop.reason}")
    return st, d


def reject(state: PolicyState, seq: int, *, now: float, config: PolicyConfig) -> PolicyState:
    """Drop pending proposal ``seq``; its task is not proposed again before a cool-down."""
    st = state.copy()
    prop = _take_pending(st, seq)
    if prop.task in st.tasks:
        ts = st.tasks[prop.task]
        ts.cooldown_until = max(ts.cooldown_until, now + config.structural_cooldown_s)
    return st


def override(
    state: PolicyState, task: str, action: Action, *, now: float, config: PolicyConfig
) -> tuple[PolicyState, Decision]:
    """Operator override (``POST /v1/tasks/{task}/{action}``): apply at once, ignoring
    cool-downs and the job cap.  ``KeyError``: unknown task; ``ValueError``: not applicable.
    """
    if task not in state.tasks:
        raise KeyError(f"unknown task {task!r}")
    st = state.copy()
    ts = st.tasks[task]
    reason = f"operator override: {action}"
    sig: dict[str, Any] = {"tasks": {task: task_numbers(st, task)}}
    if action == "merge":
        if ts.forked_from is None or ts.forked_from not in st.adapters:
            raise ValueError(f"task {task!r} has no shared adapter to merge back into")
        target = ts.forked_from
    else:
        target = ts.adapter
    if action == "rollback":
        ad = st.adapters[ts.adapter]
        if ad.probation is None:
            raise ValueError(f"adapter {ts.adapter!r} has no previous version to go back to")
        sig["to_version"] = ad.probation.previous_version
    if action == "hold":
        raise ValueError("hold is not an action to apply")
    req = Decision(0, now, action, task, target, reason, sig)
    return st, _apply(st, req, now=now, config=config, reason=reason)
