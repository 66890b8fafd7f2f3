"""The serving sync: make every configured replica hold what should be served, and route a
promoted version once every reachable replica lists it (docs/contracts.md section 11).

One round (:func:`sync_once`): read the routing table, pending rollouts and promoted versions
from SQL; ask each replica what it lists; load what is missing and unload what has been
unwanted for the grace period (:mod:`policies.serving` decides); ask again (the confirmation);
then, in one transaction, route the rollouts every reachable replica lists, refuse those a
replica refused (a reason on the rollout and the version, a policy decision row, the
``refused`` sync error), count every error and record what each replica holds. It runs after
every promotion and rollback and on a timer, so a restarted replica (engines forget runtime
loads) is whole again within one interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from policies.serving import (
    Candidate,
    Pending,
    ReplicaReport,
    Want,
    judge_rollouts,
    managed,
    parse_served,
    plan_replica,
    wanted,
)
from storage import crud
from storage import serving as store
from storage.models import AdapterVersion, ServingRollout, Task
from storage.versions import get_version
from workers.serving.backends import Backend, Unreachable
from workers.training.promote import route_of

log = logging.getLogger("adaptd.serving")


@dataclass
class SyncResult:
    routed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    loaded: dict[str, list[str]] = field(default_factory=dict)
    unloaded: dict[str, list[str]] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # replica, reason, detail
    revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"routed": self.routed, "refused": self.refused, "waiting": self.waiting,
                "loaded": self.loaded, "unloaded": self.unloaded,
                "errors": [list(e) for e in self.errors], "revision": self.revision}


@dataclass
class _Replica:
    report: ReplicaReport
    rows: list[dict[str, Any]]


def _pending(rows: Sequence[ServingRollout]) -> list[Pending]:
    return [Pending(int(r.id or 0), r.adapter, r.version, r.path) for r in rows]


def _visit(backend: Backend, want: dict[str, Want], old: dict[str, Any], now: float,
           grace_s: float, adapters: set[str], result: SyncResult) -> _Replica:
    """Reconcile one replica: list, load, unload, list again."""
    name = backend.name
    refused = {n: r.reason for n, r in old.items() if r.state == "refused"}
    unwanted_since = {n: float(r.unwanted_since) for n, r in old.items()
                      if r.unwanted_since is not None}
    try:
        listed = backend.lora_names()
        plan = plan_replica(want, listed, refused=refused, unwanted_since=unwanted_since,
                            now=now, grace_s=grace_s, adapters=adapters)
        for w in plan.load:
            t0 = time.monotonic()
            outcome = backend.load(w.served_as, w.path)
            if outcome.refused is not None:
                refused[w.served_as] = outcome.refused
                result.errors.append((name, "refused", f"{w.served_as}: {outcome.refused}"))
                log.warning("replica %s refused %s: %s", name, w.served_as, outcome.refused)
            else:
                result.loaded.setdefault(name, []).append(w.served_as)
                log.info("replica %s loaded %s (%s) in %.2fs", name, w.served_as, w.why,
                         time.monotonic() - t0)
        for served in plan.unload:
            backend.unload(served)
            result.unloaded.setdefault(name, []).append(served)
        listed = backend.lora_names()
    except Unreachable as exc:
        result.errors.append((name, "unreachable", str(exc)))
        log.warning("replica %s unreachable: %s", name, exc)
        rows = [_row(n, "refused", reason=r) for n, r in refused.items()]
        return _Replica(ReplicaReport(name, False), rows)
    rows = [_row(n, "refused", reason=r) for n, r in refused.items() if n not in listed]
    for served in sorted(listed):
        if managed(served, adapters):
            since = None if served in want else plan.unwanted_since.get(served, now)
            rows.append(_row(served, "loaded", unwanted_since=since))
    return _Replica(ReplicaReport(name, True, frozenset(listed), dict(refused)), rows)


def _row(served: str, state: str, *, reason: str = "",
         unwanted_since: float | None = None) -> dict[str, Any]:
    parsed = parse_served(served)
    assert parsed is not None
    return {"served_as": served, "adapter": parsed[0], "version": parsed[1], "state": state,
            "reason": reason, "unwanted_since": unwanted_since}


def sync_once(*, engine: Engine, backends: Sequence[Backend], grace_s: float,
              now: float | None = None) -> SyncResult:
    """One reconcile round over ``backends`` (see the module doc)."""
    at = time.time() if now is None else now
    result = SyncResult()
    with Session(engine) as session:
        _, routes = crud.routing_table(session)
        pending_rows = store.pending_rollouts(session)
        promoted = [Candidate(v.adapter, v.version, v.path)
                    for v in store.promoted_versions(session)]
        refused_anywhere = store.refused_names(session)
        adapters = store.adapter_names(session)
        old = {b.name: {r.served_as: r for r in store.held(session, replica=b.name)}
               for b in backends}
        session.expunge_all()
    want = wanted({(r["adapter"], int(r["version"]), str(r["path"])) for r in routes.values()},
                  _pending(pending_rows), promoted, refused_anywhere)
    visits = [_visit(b, want, old[b.name], at, grace_s, adapters, result) for b in backends]
    verdicts = judge_rollouts(_pending(pending_rows), [v.report for v in visits])
    with Session(engine) as session:
        for verdict in verdicts:
            rollout = session.get(ServingRollout, verdict.rollout_id)
            if rollout is None or rollout.status != "pending":
                continue  # superseded meanwhile (a rollback, a newer promotion)
            label = f"{rollout.adapter}@{rollout.version}"
            if verdict.verdict == "route":
                result.revision = _route(session, rollout, at, verdict.reason)
                result.routed.append(label)
            elif verdict.verdict == "refuse":
                _refuse(session, rollout, at, verdict.reason)
                result.refused.append(label)
            else:
                result.waiting.append(label)
        increments: dict[crud.CounterKey, float] = {}
        for replica, reason, _ in result.errors:
            key = crud.counter_key("adaptd_serving_sync_errors_total",
                                   {"replica": replica, "reason": reason})
            increments[key] = increments.get(key, 0.0) + 1
        if increments:
            crud.add_counters(session, increments=increments)
        for backend, visit in zip(backends, visits, strict=True):
            store.replace_held(session, replica=backend.name, rows=visit.rows)
        store.forget_replicas(session, keep=[b.name for b in backends])
        session.commit()
    return result


def _route(session: Session, rollout: ServingRollout, at: float, why: str) -> int:
    version = AdapterVersion(adapter=rollout.adapter, version=rollout.version, path=rollout.path,
                             sha256=rollout.sha256)
    routes = {t: route_of(version, (rollout.prompts or {}).get(t)) for t in rollout.tasks}
    revision = crud.set_routes(session, routes=routes,
                               reason=f"serve {rollout.adapter}@{rollout.version}: {why}")
    for t in rollout.tasks:
        task_row = session.get(Task, t)
        if task_row is not None:
            task_row.adapter = rollout.adapter
            task_row.updated_at = at
            session.add(task_row)
    store.finish_rollout(session, rollout=rollout, status="routed", reason=why, at=at)
    log.info("routed %s@%s to %s", rollout.adapter, rollout.version, ", ".join(rollout.tasks))
    return revision


def _refuse(session: Session, rollout: ServingRollout, at: float, why: str) -> None:
    store.finish_rollout(session, rollout=rollout, status="refused", reason=why, at=at)
    version = get_version(session, adapter=rollout.adapter, version=rollout.version)
    if version is not None:
        version.reason = f"{version.reason}; not served: {why}"[:4000]
        session.add(version)
    crud.record_decision(
        session, action="hold", adapter=rollout.adapter, origin="serving", at=at,
        reason=f"serving refused {rollout.adapter}@{rollout.version}; routes stay on the "
               f"version served: {why}",
        signals={"version": rollout.version, "served_as": rollout.served_as,
                 "tasks": list(rollout.tasks)})
    log.warning("refused %s@%s: %s", rollout.adapter, rollout.version, why)
