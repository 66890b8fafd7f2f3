"""One tick of the policy loop: load what happened, let ``policies`` decide, apply it in SQL.

1. Load: the engine's state and the tick's bookkeeping (``policies.tick.TickState``), what
   training did since the last tick (promotions, which reset the promoted adapter's
   detectors and windows; eval regressions; failures), and the feedback that arrived
   (fed to the detectors and windows exactly once).
2. Decide, all in ``policies``: operator overrides (``policies.override``), first versions
   and retrains after a base rebuild (``policies.schedule``), then the engine
   (``policies.decide``) or, for a baseline mode, its schedule.
3. Apply: record every decision, change routes, create training jobs, and write the
   engine's adapters (membership and ratios) to the ``Adapter`` table.

The engine's state is the one source of adapter membership and ratios: the ``Adapter`` rows
are its copy for readers outside the tick (the API, a job run by hand), written at the end of
every tick, never read back after the first one.

Everything a tick changes commits in one transaction, so a tick killed half-way changes
nothing and each event is observed exactly once. A Redis lock keeps ticks from overlapping;
jobs are handed to the ``train`` queue after the commit (a lost hand-off is repaired by the
next tick, which re-sends stale queued jobs).

Modes (``policies.schedule.MODES``): ``adaptive`` runs the engine; ``static`` and ``uniform``
retrain each adapter on a schedule with data-proportional or equal ratios and never fork;
``isolated`` is ``static`` over a suite with one adapter per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session

import policies
from policies import Decision, PolicyConfig, PolicyState, TaskSignals
from policies.schedule import (
    MODES,
    AdapterFacts,
    StaleServing,
    bootstrap_decisions,
    rebuild_decisions,
    schedule_decisions,
)
from storage import crud
from storage import tick as store
from storage.models import Adapter, PolicyDecision, PolicyStateRow, Task
from storage.serving import rollback_routes
from storage.suite import Suite
from storage.versions import get_version
from workers.auto_crosstalk import auto_source
from workers.policy_inputs import (
    account_finished_jobs,
    data_sizes,
    feedback_examples,
    load_state,
    observe_new_events,
)
from workers.rebuilds import stale_adapters

log = logging.getLogger(__name__)
__all__ = ["MODES", "TickResult", "policy_tick"]
STALE_QUEUED_S = 60.0


@dataclass
class TickResult:
    observed: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    skipped: str | None = None


def _record(session: Session, result: TickResult, at_event: int, **fields: Any) -> PolicyDecision:
    row = crud.record_decision(session, at_event=at_event, **fields)
    if fields.get("action") != "hold":
        crud.add_counters(session, increments={crud.counter_key(
            "adaptd_policy_decisions_total",
            {"action": str(fields["action"]), "task": str(fields.get("task") or "")}): 1})
    result.decisions.append(row.model_dump())
    return row


def _apply(session: Session, state: PolicyState, d: Decision, result: TickResult, at_event: int,
           *, wall: float, row: PolicyDecision | None = None) -> None:
    """Record one decision (unless ``row`` already records it) and carry it out; ``state``:
    the engine's state after it. The row's ``at`` is ``wall`` time (``d.at`` is the engine's
    clock, which may count events)."""
    if row is None:
        row = _record(session, result, at_event, action=d.action, task=d.task or None,
                      adapter=d.adapter, reason=d.reason, signals=dict(d.signals),
                      status=d.status, at=wall)
    if d.status != "applied" or d.action == "hold":
        return
    if d.action == "rollback":
        _rollback(session, d.adapter, int(d.signals["to_version"]))
    for adapter_name in d.train:
        params = d.job if d.job is not None else _engine_job(state, d, adapter_name)
        job = crud.create_job(session, adapter=adapter_name, kind=d.action, params=params,
                              decision_id=row.id)
        assert job.id is not None
        result.jobs.append(job.id)


def _engine_job(state: PolicyState, d: Decision, adapter_name: str) -> dict[str, Any]:
    """An engine decision's job: the adapter's tasks and the ratios the decision set (else its
    current ones), what it targets, which tasks its self-audit must cover and which tasks
    forked out of it its affinity probes observe."""
    params: dict[str, Any] = {"targeted": list(d.signals.get("targeted") or [d.task]),
                              "audit": list(d.signals.get("audit") or [])}
    ad = state.adapters.get(adapter_name)
    if ad is not None:
        params["tasks"] = list(ad.tasks)
        params["ratios"] = dict(d.ratios) if d.ratios else dict(ad.ratios.weights)
    if observed := policies.observed_tasks(state, adapter_name):
        params["observe"] = observed
    return params


def _write_adapters(session: Session, state: PolicyState) -> None:
    """Copy the engine's adapters (tasks, ratios) to the ``Adapter`` table; an adapter the
    engine no longer has (its task merged back) is retired."""
    for name, ad in state.adapters.items():
        row = session.get(Adapter, name)
        if row is None:
            parents = {state.tasks[t].forked_from for t in ad.tasks if t in state.tasks}
            row = Adapter(name=name, parent=next(iter(parents)) if len(parents) == 1 else None)
            session.add(row)
        tasks, ratios = list(ad.tasks), dict(ad.ratios.weights)
        if (row.tasks, row.ratios, row.ratios_version, row.status) != (
                tasks, ratios, ad.ratios.version, "active"):
            row.tasks, row.ratios, row.ratios_version = tasks, ratios, ad.ratios.version
            row.status = "active"
    for row in crud.list_adapters(session):
        if row.name not in state.adapters and row.status == "active":
            row.tasks, row.ratios, row.status = [], {}, "retired"


def _rollback(session: Session, adapter: str, to_version: int) -> None:
    target = get_version(session, adapter=adapter, version=to_version)
    if target is None:
        raise ValueError(f"rollback target {adapter}@{to_version} does not exist")
    _, routes = crud.routing_table(session)
    store.roll_back_versions(session, adapter=adapter, after=to_version)
    tasks = [t for t, r in routes.items() if r["adapter"] == adapter]
    rollback_routes(session, target=target, tasks=tasks)


def _operator_requests(session: Session, state: PolicyState, config: PolicyConfig,
                       now: float, result: TickResult, at_event: int, wall: float) -> PolicyState:
    """Apply overrides the API recorded (status ``requested``)."""
    for req in store.requested_decisions(session):
        action = next((a for a in policies.ACTIONS if a == req.action), None)
        try:
            if action is None:
                raise ValueError(f"unknown action {req.action!r}")
            state, d = policies.override(state, str(req.task), action, now=now, config=config)
        except (KeyError, ValueError) as exc:
            req.status, req.reason = "refused", f"operator override refused: {exc}"
            continue
        req.status, req.reason, req.adapter = "applied", d.reason, d.adapter
        req.signals, req.at_event = dict(d.signals), at_event
        result.decisions.append(req.model_dump())
        _apply(session, state, d, result, at_event, wall=wall, row=req)
    return state


def _update_task_rows(session: Session, state: PolicyState) -> None:
    summary = policies.summarize(state)
    for name, s in summary.items():
        row = session.get(Task, name)
        if row is None:
            continue
        row.quality = s["quality"]
        row.crosstalk_rate = s["crosstalk_rate"]
        row.crosstalk_source = s["crosstalk_source"]
        row.degraded = bool(s["degraded"])
        row.ratio = float(s["ratio"] or 0.0)
        row.updated_at = time.time()


def _adapter_facts(session: Session, state: PolicyState,
                   base_build: str | None) -> dict[str, AdapterFacts]:
    """What ``policies.schedule`` needs to know of each adapter of the engine's state."""
    promoted = store.promoted_adapters(session)
    bootstraps = store.failed_tries(session, key="bootstrap")
    rebuilds = (store.failed_tries(session, key="rebuild", value=base_build)
                if base_build is not None else {})
    return {name: AdapterFacts(
        name, tuple(ad.tasks), promoted=name in promoted,
        failed_bootstraps=bootstraps.get(name, 0), failed_rebuilds=rebuilds.get(name, 0),
        ratios=dict(ad.ratios.weights)) for name, ad in state.adapters.items()}


def policy_tick(*, engine: Engine, client: redis.Redis | None, prefix: str, suite: Suite,
                config: PolicyConfig, mode: str = "adaptive", now: float | None = None,
                enqueue: Callable[[int], None] | None = None, max_events: int = 50_000,
                resend_after_s: float = 600.0, base_build: str | None = None) -> TickResult:
    """Run one tick (see the module doc). ``enqueue`` hands a job id to the train queue.
    ``now``: the wall time (default: the clock's); the engine's own clock is
    ``TickState.clock``. ``base_build``: the base build jobs train on now
    (``expected_build``); adapters serving a version of another build are retrained.
    None: not checked."""
    if mode not in MODES:
        raise ValueError(f"policy mode {mode!r}: one of {MODES}")
    lock = client.lock(f"{prefix}lock:policy", timeout=600, blocking_timeout=0) if client else None
    if lock is not None and not lock.acquire(blocking=False):
        return TickResult(skipped="another tick holds the lock")
    try:
        return _tick(engine, suite, config, mode, time.time() if now is None else now,
                     enqueue, max_events, resend_after_s, base_build)
    finally:
        if lock is not None:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("policy lock expired during the tick")


def _tick(engine: Engine, suite: Suite, config: PolicyConfig, mode: str, wall: float,
          enqueue: Callable[[int], None] | None, max_events: int, resend_after_s: float,
          base_build: str | None) -> TickResult:
    result = TickResult()
    with Session(engine, expire_on_commit=False) as session:
        # 1. Load: the state, what training did, the new feedback.
        fed = feedback_examples(session)
        sizes = data_sizes(suite, fed)
        state, tick = load_state(session, config, sizes)
        state, seen = account_finished_jobs(session, state, tick, config,
                                            tick.accounting_clock(config, wall))
        tick.accounted(config, seen)
        now = tick.clock(config, wall)
        auto = (auto_source(session, suite, margin=config.auto_crosstalk_margin,
                            accepted=sum(fed.values()), now=now)
                if config.auto_crosstalk_margin is not None else None)
        result.observed = observe_new_events(session, state, max_events, auto)
        tick.observed_total += result.observed
        at_event = tick.observed_total
        now = tick.clock(config, wall)  # events move the clock of a simulation
        # 2. Decide and apply: operator overrides first.
        state = _operator_requests(session, state, config, now, result, at_event, wall)
        active = crud.active_jobs(session)
        busy = {j.adapter for j in active}
        buffers = crud.buffered_counts(session)
        _, routes = crud.routing_table(session)
        facts = _adapter_facts(session, state, base_build)
        decisions, tick.bootstrap_given_up = bootstrap_decisions(
            list(facts.values()), routed=routes, busy=busy, running=len(active) + len(result.jobs),
            mode=mode, sizes=sizes, config=config, now=wall, given_up=tick.bootstrap_given_up)
        _apply_all(session, state, decisions, result, at_event, wall, busy)
        if base_build is not None:
            stale = [StaleServing(s.adapter, s.version, s.build, s.tasks, s.reason(base_build))
                     for s in stale_adapters(routes, base_build)]
            decisions, tick.rebuild_given_up = rebuild_decisions(
                stale, facts, build=base_build, busy=busy,
                running=len(active) + len(result.jobs), mode=mode, sizes=sizes, config=config,
                now=wall, given_up=tick.rebuild_given_up)
            _apply_all(session, state, decisions, result, at_event, wall, busy)
        running = len(active) + len(result.jobs)
        if mode == "adaptive":
            signals = {t: TaskSignals(new_examples=buffers.get(t, 0), data_size=sizes.get(t))
                       for t in state.tasks}
            state, decisions = policies.decide(state, signals, now=now, config=config,
                                               running_jobs=running, affinity=tick.affinity)
        else:
            decisions = schedule_decisions(list(facts.values()), buffers=buffers, busy=busy,
                                           running=running, mode=mode, sizes=sizes,
                                           config=config, now=wall)
        _apply_all(session, state, decisions, result, at_event, wall, busy)
        # 3. Adapters, gauges, hand-offs, state, commit.
        _write_adapters(session, state)
        _update_task_rows(session, state)
        send = tick.hand_off(result.jobs, store.stale_jobs(session, now=wall,
                                                            queued_after_s=STALE_QUEUED_S),
                             wall=wall, resend_after_s=resend_after_s)
        stored = session.get(PolicyStateRow, 1) or PolicyStateRow(id=1)
        stored.state = {"engine": state.to_dict(), "meta": tick.to_dict(), "mode": mode}
        stored.updated_at = wall
        session.add(stored)
        session.commit()
    # 4. Hand new (and stale) jobs to the train queue only after the commit.
    if enqueue is not None:
        for job_id in send:
            enqueue(job_id)
    return result


def _apply_all(session: Session, state: PolicyState, decisions: list[Decision],
               result: TickResult, at_event: int, wall: float, busy: set[str]) -> None:
    for d in decisions:
        _apply(session, state, d, result, at_event, wall=wall)
        busy.update(d.train)
