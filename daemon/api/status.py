"""How far the loop has got: GET /v1/status, /v1/adapters and /v1/jobs."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import APIRouter, Query
from sqlmodel import Session

from daemon.api.deps import DATABASE_DOWN, AppDeps
from daemon.api.models import AdapterInfo, Adapters, Job, Jobs, Status, VersionInfo
from storage import crud

router = APIRouter()


@router.get("/v1/status", response_model=Status, responses=DATABASE_DOWN,
            summary="Stored and unobserved events, ingest lag, jobs, routing revision")
def get_status(deps: AppDeps) -> Status:
    """How far the loop has got: stored and not yet observed events, lag, jobs (active, and
    finished but not yet accounted by the policy engine), routing."""
    with Session(deps.engine) as session:
        revision, _ = crud.routing_table(session)
        counts = {"events": crud.count_feedback(session),
                  "unobserved": crud.count_unobserved(session),
                  "jobs_active": len(crud.active_jobs(session)),
                  "jobs_unaccounted": crud.count_unaccounted_jobs(session)}
    try:
        lag: int | None = deps.stream.lag()
    except redis.RedisError:
        lag = None
    return Status(**counts, routing_revision=revision, ingest_lag=lag)


@router.get("/v1/adapters", response_model=Adapters, responses=DATABASE_DOWN,
            summary="Adapters with tasks and ratios, and every version with status and scores")
def get_adapters(deps: AppDeps) -> Adapters:
    """Adapters with their tasks and ratios, and every version with status and scores. A
    version whose adapter has no row (none is expected) is listed under status `unknown`."""
    with Session(deps.engine) as session:
        adapters = {a.name: AdapterInfo(tasks=a.tasks, ratios=a.ratios, status=a.status,
                                        parent=a.parent, versions=[])
                    for a in crud.list_adapters(session)}
        for v in crud.list_versions(session):
            entry = adapters.setdefault(v.adapter, AdapterInfo(
                tasks=[], ratios={}, status="unknown", parent=None, versions=[]))
            entry.versions.append(VersionInfo.model_validate(v, from_attributes=True))
    return Adapters(adapters=adapters)


@router.get("/v1/jobs", response_model=Jobs, responses=DATABASE_DOWN,
            summary="Training jobs, newest first")
def get_jobs(deps: AppDeps, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Jobs:
    with Session(deps.engine) as session:
        return Jobs(jobs=[Job.model_validate(j, from_attributes=True)
                          for j in crud.list_jobs(session, limit=limit)])
