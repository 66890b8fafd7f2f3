"""One tick of the policy loop: feed new feedback to the detectors, learn what training did,
ask the pure engine (``policies.decide``) what to do, and carry it out in SQL.

Everything a tick changes — the engine's state, the events it marked observed, decisions,
new training jobs, ratios, routes of a rollback, task gauges — commits in one transaction,
so a tick killed half-way changes nothing and each event is observed exactly once. A Redis
lock keeps ticks from overlapping; jobs are handed to the ``train`` queue after the commit
(a lost hand-off is repaired by the next tick, which re-sends stale queued jobs).

Modes (DESIGN section 9): ``adaptive`` runs the engine; ``static`` and ``uniform`` retrain
each adapter on a schedule (enough new examples) with data-proportional or equal ratios and
never fork; ``isolated`` is ``static`` over a suite with one adapter per task.

The engine's times (cooldowns, patience, probation) run on wall time, or, with
``PolicyConfig.seconds_per_event``, on a clock that advances only with observed events: a
synchronous simulation then takes the same decisions on a fast or a slow machine.
Leases and job hand-offs always use wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import policies
from policies import Decision, PolicyConfig, PolicyState, TaskSignals
from storage import crud
from storage.models import (
    Adapter,
    AdapterVersion,
    PolicyDecision,
    PolicyStateRow,
    Task,
    TrainingJob,
)
from storage.serving import rollback_routes
from storage.suite import Suite
from workers.auto_crosstalk import auto_source
from workers.policy_inputs import (
    account_finished_jobs,
    affinity_estimate,
    data_sizes,
    feedback_examples,
    load_state,
    observe_new_events,
)
from workers.rebuilds import stale_adapters

log = logging.getLogger(__name__)
MODES = ("adaptive", "static", "uniform", "isolated")
STALE_QUEUED_S = 60.0
BOOTSTRAP_TRIES = 3


@dataclass
class TickResult:
    observed: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    skipped: str | None = None


def _promoted(session: Session, adapter: str) -> bool:
    return session.execute(
        select(func.count()).select_from(AdapterVersion)
        .where(col(AdapterVersion.adapter) == adapter, col(AdapterVersion.status) == "promoted")
    ).scalar_one() > 0


def _failed_tries(session: Session, adapter: str, key: str, value: Any = True) -> int:
    """Jobs of ``adapter`` with ``params[key] == value`` (first versions: ``bootstrap``,
    retrains after a base rebuild: ``rebuild``) that ended without a promotion."""
    jobs = session.execute(select(TrainingJob).where(
        col(TrainingJob.adapter) == adapter,
        col(TrainingJob.status).in_(["rejected", "failed"]))).scalars().all()
    return sum(1 for j in jobs if (j.params or {}).get(key) == value)


def _schedule_ratios(mode: str, tasks: list[str], sizes: dict[str, int]) -> dict[str, float]:
    """Baseline policies: data-proportional (static, isolated) or equal (uniform) ratios."""
    if mode == "uniform":
        return {t: 1.0 / len(tasks) for t in tasks}
    total = sum(sizes.get(t, 0) for t in tasks) or 1
    return {t: sizes.get(t, 0) / total for t in tasks}


def _baseline_gate(mode: str) -> dict[str, Any]:
    """Job params for the shared-adapter baselines, which judge a version by its average."""
    return {"gate": {"mode": "mean"}} if mode in ("static", "uniform") else {}


def _new_job(session: Session, *, adapter: str, kind: str, params: dict[str, Any],
             decision_id: int | None, created: list[int]) -> None:
    job = crud.create_job(session, adapter=adapter, kind=kind, params=params,
                          decision_id=decision_id)
    assert job.id is not None
    created.append(job.id)


def _record(session: Session, result: TickResult, at_event: int, **fields: Any) -> PolicyDecision:
    row = crud.record_decision(session, at_event=at_event, **fields)
    if fields.get("action") != "hold":
        crud.add_counters(session, increments={crud.counter_key(
            "adaptd_policy_decisions_total",
            {"action": str(fields["action"]), "task": str(fields.get("task") or "")}): 1})
    result.decisions.append(row.model_dump())
    return row


def _apply(session: Session, d: Decision, result: TickResult, at_event: int, *, wall: float,
           row: PolicyDecision | None = None) -> None:
    """Record one engine decision (unless ``row`` already records it) and carry it out.
    The row's ``at`` is ``wall`` time (``d.at`` is the engine's clock, which may count events)."""
    if row is None:
        row = _record(session, result, at_event, action=d.action, task=d.task,
                      adapter=d.adapter, reason=d.reason, signals=dict(d.signals),
                      status=d.status, at=wall)
    if d.status != "applied" or d.action == "hold":
        return
    if d.action == "fork":
        source = session.get(Adapter, str(d.signals.get("from_adapter")))
        if source is not None:
            source.tasks = [t for t in source.tasks if t != d.task]
        if session.get(Adapter, d.adapter) is None:
            session.add(Adapter(name=d.adapter, tasks=[d.task],
                                parent=source.name if source else None))
    if d.action == "merge":
        target = session.get(Adapter, d.adapter)
        if target is not None and d.task not in target.tasks:
            target.tasks = [*target.tasks, d.task]
    if d.ratios and d.adapter:
        adapter = session.get(Adapter, d.adapter)
        if adapter is not None:
            adapter.ratios = dict(d.ratios)
            adapter.ratios_version = d.ratio_version or adapter.ratios_version + 1
    if d.action == "rollback":
        _rollback(session, d.adapter, int(d.signals["to_version"]))
    for adapter_name in d.train:
        adapter = session.get(Adapter, adapter_name)
        params: dict[str, Any] = {"targeted": list(d.signals.get("targeted") or [d.task]),
                                  "audit": list(d.signals.get("audit") or [])}
        if adapter is not None:
            params["tasks"] = list(adapter.tasks)
            params["ratios"] = dict(adapter.ratios)
        _new_job(session, adapter=adapter_name, kind=d.action, params=params,
                 decision_id=row.id, created=result.jobs)


def _rollback(session: Session, adapter: str, to_version: int) -> None:
    target = session.execute(select(AdapterVersion).where(
        col(AdapterVersion.adapter) == adapter, col(AdapterVersion.version) == to_version)).scalars().first()
    if target is None:
        raise ValueError(f"rollback target {adapter}@{to_version} does not exist")
    _, routes = crud.routing_table(session)
    for r in session.execute(select(AdapterVersion).where(
            col(AdapterVersion.adapter) == adapter, col(AdapterVersion.status) == "promoted",
            col(AdapterVersion.version) > to_version)).scalars():
        r.status = "rolled_back"
    tasks = [t for t, r in routes.items() if r["adapter"] == adapter]
    rollback_routes(session, target=target, tasks=tasks)


def _operator_requests(session: Session, state: PolicyState, config: PolicyConfig,
                       now: float, result: TickResult, at_event: int, wall: float) -> PolicyState:
    """Apply overrides the API recorded (status ``requested``)."""
    rows = session.execute(select(PolicyDecision).where(col(PolicyDecision.status) == "requested")
                           .order_by(col(PolicyDecision.id))).scalars().all()
    for req in rows:
        try:
            state, d = policies.override(state, str(req.task), req.action, now=now,
                                         config=config)
        except (KeyError, ValueError) as exc:
            req.status, req.reason = "refused", f"operator override refused: {exc}"
            continue
        req.status, req.reason, req.adapter = "applied", d.reason, d.adapter
        req.signals, req.at_event = dict(d.signals), at_event
        result.decisions.append(req.model_dump())
        _apply(session, d, result, at_event, wall=wall, row=req)
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


def _stale_jobs(session: Session, now: float) -> list[int]:
    """Queued jobs nobody picked up for a while, or running jobs whose lease expired."""
    rows = session.execute(select(TrainingJob).where(
        col(TrainingJob.status).in_(["queued", "running"]))).scalars().all()
    return [int(j.id) for j in rows if j.id is not None and (
        (j.status == "queued" and now - j.created_at > STALE_QUEUED_S and j.lease_until is None)
        or (j.status == "running" and (j.lease_until or 0) < now))]


def _retrain_stale_builds(session: Session, state: PolicyState, build: str, *,
                          routes: dict[str, dict[str, Any]], mode: str, sizes: dict[str, int],
                          busy: set[str], running: int, config: PolicyConfig,
                          result: TickResult, at_event: int, meta: dict[str, Any],
                          now: float) -> None:
    """One retrain per adapter still serving a version of another base build (module doc of
    ``workers.rebuilds``); given up with a hold after BOOTSTRAP_TRIES rejected tries."""
    for stale in stale_adapters(routes, build):
        name = stale.adapter
        ad = state.adapters.get(name)
        if ad is None or not ad.tasks or name in busy:
            continue
        tries = _failed_tries(session, name, "rebuild", build)
        if tries >= BOOTSTRAP_TRIES:
            given_up = meta.setdefault("rebuild_given_up", {})
            if given_up.get(name) != build:
                given_up[name] = build
                _record(session, result, at_event, action="hold", task=None, adapter=name,
                        reason=f"hold rebuild: {tries} versions of {name} on base build "
                               f"{build!r} were rejected; {', '.join(stale.tasks)} stay "
                               f"unservable", signals={"tries": tries, "build": build})
            continue
        if running + len(result.jobs) >= max(1, config.max_concurrent_jobs):
            return
        row = session.get(Adapter, name)
        tasks = list(ad.tasks)
        if mode != "adaptive":
            ratios = _schedule_ratios(mode, tasks, sizes)
        elif row is not None and row.ratios:
            ratios = dict(row.ratios)  # the engine's current mixture for this adapter
        else:
            ratios = policies.prior_ratios({t: sizes.get(t, 0) for t in tasks}, config.ratios)
        decision = _record(session, result, at_event, action="retrain", task=None, adapter=name,
                           reason=stale.reason(build), at=now,
                           signals={"served_version": stale.version, "served_build": stale.build,
                                    "build": build, "tasks": tasks, "ratios": ratios})
        params = {"tasks": tasks, "ratios": ratios, "rebuild": build, **_baseline_gate(mode)}
        if tries:
            params["train"] = {"seed": tries}
        _new_job(session, adapter=name, kind="retrain", decision_id=decision.id, params=params,
                 created=result.jobs)
        busy.add(name)


def policy_tick(*, engine: Engine, client: redis.Redis | None, prefix: str, suite: Suite,
                config: PolicyConfig, mode: str = "adaptive", now: float | None = None,
                enqueue: Callable[[int], None] | None = None, max_events: int = 50_000,
                resend_after_s: float = 600.0, base_build: str | None = None) -> TickResult:
    """Run one tick (see the module doc). ``enqueue`` hands a job id to the train queue.
    ``now``: the wall time (default: the clock's); the engine's own clock is
    :func:`policy_clock`. ``base_build``: the base build jobs train on now
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


def policy_clock(config: PolicyConfig, meta: dict[str, Any], wall: float) -> float:
    """The engine's ``now``: wall time, or (``config.seconds_per_event`` set) that many
    seconds per event observed and per tick that learnt of finished jobs (``clock_jobs``).

    >>> policy_clock(PolicyConfig(), {"observed_total": 300}, wall=1.8e9)
    1800000000.0
    >>> policy_clock(PolicyConfig(seconds_per_event=0.5), {"observed_total": 300, "clock_jobs": 2},
    ...              wall=1.8e9)
    151.0
    """
    if config.seconds_per_event is None:
        return wall
    steps = int(meta.get("observed_total", 0)) + int(meta.get("clock_jobs", 0))
    return steps * config.seconds_per_event


def _tick(engine: Engine, suite: Suite, config: PolicyConfig, mode: str, wall: float,
          enqueue: Callable[[int], None] | None, max_events: int, resend_after_s: float,
          base_build: str | None) -> TickResult:
    result = TickResult()
    with Session(engine, expire_on_commit=False) as session:
        fed = feedback_examples(session)
        sizes = data_sizes(suite, fed)
        state, meta = load_state(session, config, sizes)
        # 1. What training did since the last tick: promotions (which reset the promoted
        #    adapter's detectors and windows), eval regressions, failures.
        #    On an event clock a tick that accounts jobs moves it one step: a job's outcome
        #    must come after the decision that started it, as on a wall clock, or "has the
        #    rebalance had its chance?" would never say yes.
        seen_before = meta.get("jobs_seen", 0)
        step = config.seconds_per_event or 0.0
        state = account_finished_jobs(session, state, meta, config,
                                      policy_clock(config, meta, wall) + step)
        if step and meta["jobs_seen"] != seen_before:
            meta["clock_jobs"] = int(meta.get("clock_jobs", 0)) + 1
        now = policy_clock(config, meta, wall)
        # 2. Feed new feedback to the detectors and windows (exactly once: same commit).
        auto = (auto_source(session, suite, margin=config.auto_crosstalk_margin,
                            accepted=sum(fed.values()), now=now)
                if config.auto_crosstalk_margin is not None else None)
        result.observed = observe_new_events(session, state, max_events, auto,
                                             mixture=config.mixture_leak_rate is not None)
        meta["observed_total"] = int(meta.get("observed_total", 0)) + result.observed
        at_event = meta["observed_total"]
        now = policy_clock(config, meta, wall)  # events move the clock of a simulation
        # 3. Operator overrides recorded by the API.
        state = _operator_requests(session, state, config, now, result, at_event, wall)
        active = crud.active_jobs(session)
        busy = {j.adapter for j in active}
        buffers = crud.buffered_counts(session)
        # 4. Tasks nobody serves yet: their adapter gets a first version before anything
        #    else. (A forked adapter's task is still served by its old adapter until the
        #    fork is promoted, so a rejected fork is not "bootstrapped" over and over.)
        #    A first version the gate keeps rejecting is tried BOOTSTRAP_TRIES times; then
        #    its tasks stay on the base model and a hold says so (no endless retraining).
        _, routes = crud.routing_table(session)
        for name, ad in sorted(state.adapters.items()):
            unserved = [t for t in ad.tasks if t not in routes]
            if not unserved or name in busy or _promoted(session, name):
                continue
            tries = _failed_tries(session, name, "bootstrap")
            if tries >= BOOTSTRAP_TRIES:
                if not meta.setdefault("bootstrap_given_up", {}).get(name):
                    meta["bootstrap_given_up"][name] = wall
                    _record(session, result, at_event, action="hold", task=None, adapter=name,
                            reason=f"hold bootstrap: {tries} first versions of {name} were "
                                   f"rejected; {unserved} stay on the base model",
                            signals={"tries": tries, "unserved": unserved})
                continue
            if len(active) + len(result.jobs) < max(1, config.max_concurrent_jobs):
                ratios = (policies.prior_ratios({t: sizes.get(t, 0) for t in ad.tasks},
                                                config.ratios)
                          if mode == "adaptive" else _schedule_ratios(mode, list(ad.tasks), sizes))
                row = _record(session, result, at_event, action="retrain", task=None,
                              adapter=name, reason="bootstrap: no promoted version yet",
                              signals={"tasks": list(ad.tasks), "ratios": ratios})
                # A retry on the same data with the same seed would train the same weights
                # and meet the same verdict: each try draws its own batches and LoRA init.
                params = {"tasks": list(ad.tasks), "ratios": ratios, "bootstrap": True,
                          **_baseline_gate(mode)}
                if tries:
                    params["train"] = {"seed": tries}
                _new_job(session, adapter=name, kind="retrain", decision_id=row.id,
                         params=params, created=result.jobs)
                busy.add(name)
        # 4b. Adapters serving a version trained on another base build (the base was
        #     rebuilt): the server refuses those versions, so each adapter retrains once.
        if base_build is not None:
            _retrain_stale_builds(session, state, base_build, routes=routes, mode=mode,
                                  sizes=sizes, busy=busy, running=len(active), config=config, result=result,
                                  at_event=at_event, meta=meta, now=wall)
        # 5. Decide.
        running = len(active) + len(result.jobs)
        if mode == "adaptive":
            signals = {t: TaskSignals(new_examples=buffers.get(t, 0), data_size=sizes.get(t))
                       for t in state.tasks}
            state, decisions = policies.decide(state, signals, now=now, config=config,
                                               running_jobs=running, affinity=affinity_estimate(meta))
            for d in decisions:
                _apply(session, d, result, at_event, wall=wall)
        else:
            for name, ad in sorted(state.adapters.items()):
                new = sum(buffers.get(t, 0) for t in ad.tasks)
                if name in busy or new < config.min_new_examples or running >= config.max_concurrent_jobs:
                    continue
                ratios = _schedule_ratios(mode, list(ad.tasks), sizes)
                row = _record(session, result, at_event, action="retrain", task=None,
                              adapter=name, reason=f"schedule ({mode}): {new} new examples",
                              signals={"new_examples": new, "ratios": ratios})
                _new_job(session, adapter=name, kind="retrain", decision_id=row.id,
                         params={"tasks": list(ad.tasks), "ratios": ratios,
                                 **_baseline_gate(mode)}, created=result.jobs)
                running += 1
        # 6. Gauges, state, commit.
        _update_task_rows(session, state)
        # Job hand-offs and leases are wall-clock matters whatever the engine's clock.
        sent: dict[str, float] = {k: v for k, v in (meta.get("sent") or {}).items()
                                  if wall - v < 86400}
        resend = [j for j in _stale_jobs(session, wall)
                  if wall - sent.get(str(j), 0.0) > resend_after_s and j not in result.jobs]
        for job_id in [*result.jobs, *resend]:
            sent[str(job_id)] = wall
        meta["sent"] = sent
        stored = session.get(PolicyStateRow, 1) or PolicyStateRow(id=1)
        stored.state = {"engine": state.to_dict(), "meta": meta, "mode": mode}
        stored.updated_at = wall
        session.add(stored)
        session.commit()
    # 7. Hand new (and stale) jobs to the train queue only after the commit.
    if enqueue is not None:
        for job_id in [*result.jobs, *resend]:
            enqueue(job_id)
    return result
