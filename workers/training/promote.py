"""The job's final SQL transaction, and publishing the routing table afterwards.

Everything that makes a version live happens in ONE transaction: the version row becomes
``promoted`` or ``rejected`` (with eval and reasons), the job gets its result, on promotion
the adapter's tasks are routed to the version and a routing revision is added, and the
training examples read by the run are marked as consumed. The transaction first re-checks
that this worker still owns the running job and that the job has no result yet, so a job
never promotes twice, even if a stale worker wakes up late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.crud import add_counters, counter_key, routing_table, set_routes
from storage.models import AdapterVersion, Task, TrainingExample, TrainingJob, now
from storage.serving import add_rollout
from workers.training.lease import still_ours

log = logging.getLogger("adaptd.training")


class LeaseLost(RuntimeError):
    """Another worker owns the job now, or it already has a result."""


@dataclass(frozen=True)
class Finalized:
    promoted: bool
    revision: int | None


def route_of(version: AdapterVersion, prompt: Mapping[str, Any] | None) -> dict[str, Any]:
    """The routing entry of ``version`` (docs/contracts.md section 11: served name, prompt contract);
    without a contract the task keeps the one it has."""
    route: dict[str, Any] = {"adapter": version.adapter, "version": version.version,
                             "path": version.path, "sha256": version.sha256,
                             "served_as": f"{version.adapter}-v{version.version}"}
    if prompt is not None:
        route["prompt"] = dict(prompt)
    return route


def current_routes(session: Session, tasks: Sequence[str]) -> dict[str, tuple[str, int]]:
    """task -> (adapter, version) currently served, for ``tasks`` that have a route."""
    _, routes = routing_table(session)
    return {t: (r["adapter"], int(r["version"])) for t, r in routes.items() if t in tasks}


def finalize(
    engine: Engine, *, job_id: int, worker_id: str, version_id: int, promote: bool,
    tasks: Sequence[str], baseline_routes: Mapping[str, tuple[str, int]],
    eval_result: Mapping[str, Any], reason: str, example_ids: Sequence[int],
    prompts: Mapping[str, Mapping[str, Any]] | None = None, two_step: bool = False,
) -> Finalized | None:
    """Commit the outcome. Returns None (nothing written) if production changed since the
    eval (the caller re-evaluates); raises :class:`LeaseLost` if the job is not ours.

    ``prompts``: task -> prompt contract, published with the routes. ``two_step`` (serving
    replicas are configured): a promoted version is not routed here but waits as a pending
    rollout until every reachable replica lists it (``workers.serving.sync``)."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.execute(
            select(TrainingJob).where(col(TrainingJob.id) == job_id).with_for_update()
        ).scalar_one()
        if job.lease_owner != worker_id or job.status != "running" or job.result_version:
            raise LeaseLost(f"job {job_id} is no longer ours (status {job.status})")
        row = session.get(AdapterVersion, version_id, with_for_update=True)
        if row is None or row.status != "candidate":
            raise LeaseLost(f"version row {version_id} is not a candidate")
        if promote and current_routes(session, tasks) != dict(baseline_routes):
            return None
        at = now()
        row.status = "promoted" if promote else "rejected"
        row.eval = dict(eval_result)
        row.reason = reason
        revision: int | None = None
        if promote and two_step:
            row.promoted_at = at
            add_rollout(session, version=row, tasks=tasks, prompts=prompts or {}, at=at)
        elif promote:
            row.promoted_at = at
            routes = {t: route_of(row, (prompts or {}).get(t)) for t in tasks}
            revision = set_routes(session, routes=routes,
                                  reason=f"promote {row.adapter}@{row.version} (job {job_id})")
            for t in tasks:
                task_row = session.get(Task, t)
                if task_row is not None:
                    task_row.adapter = row.adapter
                    task_row.updated_at = at
        add_counters(session, increments={counter_key(
            "adaptd_training_runs_total",
            {"adapter": row.adapter, "outcome": "promoted" if promote else "rejected"}): 1})
        job.status = "succeeded" if promote else "rejected"
        job.result_version = row.version
        job.finished_at = at
        job.lease_owner = None
        job.lease_until = None
        job.error = None
        if example_ids:
            # Consumed either way: a rejected run must not re-trigger on the same buffer.
            # Rows stay in the replay set of later runs.
            for i in range(0, len(example_ids), 500):
                session.execute(
                    update(TrainingExample)
                    .where(col(TrainingExample.id).in_(list(example_ids[i : i + 500])))
                    .where(col(TrainingExample.trained_in).is_(None))
                    .values(trained_in=f"{row.adapter}@{row.version}")
                )
        session.commit()
        return Finalized(promoted=promote, revision=revision)


def publish_routing(engine: Engine, redis_client: Any, key_prefix: str) -> None:
    """Publish the routing table (the /v1/routing body) on ``<prefix>routing``; best effort:
    the SQL commit is the record, subscribers that miss a message can poll."""
    if redis_client is None:
        return
    with Session(engine) as session:
        revision, routes = routing_table(session)
    body = json.dumps({"revision": revision, "routes": routes}, sort_keys=True)
    try:
        redis_client.publish(f"{key_prefix}routing", body)
    except Exception:  # Redis down must not undo a committed promotion
        log.exception("could not publish routing revision %s", revision)


def mark_failed(engine: Engine, *, job_id: int, worker_id: str, error: str, requeue: bool) -> None:
    """Record a failure (or put the job back in the queue) if we still own it."""
    with Session(engine) as session:
        done = session.execute(
            update(TrainingJob)
            .where(*still_ours(job_id, worker_id))
            .values(
                status="queued" if requeue else "failed",
                error=error[:4000],
                lease_owner=None,
                lease_until=None,
                finished_at=None if requeue else now(),
            )
        )
        if not requeue and int(getattr(done, "rowcount", 0) or 0) > 0:
            job = session.get(TrainingJob, job_id)
            add_counters(session, increments={counter_key(
                "adaptd_training_runs_total",
                {"adapter": job.adapter if job else "", "outcome": "failed"}): 1})
        session.commit()
