"""Tasks and decisions: GET /v1/tasks, GET /v1/decisions, and the operator overrides
POST /v1/tasks/{task}/{action} (admin bearer token; off without one)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlmodel import Session

from daemon.api.deps import DATABASE_DOWN, ApiError, AppDeps, problem
from daemon.api.models import Decision, Decisions, OverrideAccepted, Tasks, TaskState
from storage import crud
from storage.db import session_scope

ADMIN_ACTIONS = ("retrain", "rebalance", "fork", "merge")
router = APIRouter()


@router.get("/v1/tasks", response_model=Tasks, responses=DATABASE_DOWN,
            summary="Per task: risk, adapter, ratio, quality, crosstalk, buffered examples")
def get_tasks(deps: AppDeps) -> Tasks:
    with Session(deps.engine) as session:
        buffers = crud.buffered_counts(session)
        tasks = {
            t.name: TaskState(risk=t.risk, tone=t.tone, adapter=t.adapter, ratio=t.ratio,
                              quality=t.quality, crosstalk_rate=t.crosstalk_rate,
                              crosstalk_source=t.crosstalk_source, degraded=t.degraded,
                              buffered_examples=buffers.get(t.name, 0))
            for t in crud.list_tasks(session)
        }
    return Tasks(tasks=tasks)


@router.get("/v1/decisions", response_model=Decisions, responses=DATABASE_DOWN,
            summary="Policy decisions, newest first, with reasons and signals")
def get_decisions(deps: AppDeps,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Decisions:
    with Session(deps.engine) as session:
        rows = crud.list_decisions(session, limit=limit)
        return Decisions(decisions=[Decision.model_validate(r, from_attributes=True)
                                    for r in rows])


@router.post(
    "/v1/tasks/{task}/{action}", status_code=202, response_model=OverrideAccepted,
    summary="Operator override: retrain, rebalance, fork or merge a task",
    responses={401: problem("missing `Authorization: Bearer <admin token>`"),
               403: problem("wrong admin token, or admin endpoints off (no token configured)"),
               404: problem("unknown task or action"),
               **DATABASE_DOWN})
def post_override(task: str, action: str, request: Request, deps: AppDeps) -> OverrideAccepted:
    token = deps.settings.admin_token_value()
    if token is None:
        raise ApiError(403, "admin endpoints are off: set ADAPTD_ADMIN_TOKEN to enable them")
    given = request.headers.get("authorization", "")
    if not given.startswith("Bearer "):
        raise ApiError(401, "missing 'Authorization: Bearer <admin token>'")
    if not hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
        raise ApiError(403, "wrong admin token")
    if task not in deps.suite.tasks:
        raise ApiError(404, f"unknown task {task[:64]!r}")
    if action not in ADMIN_ACTIONS:
        raise ApiError(404, f"unknown action {action[:32]!r}; one of {list(ADMIN_ACTIONS)}")
    with session_scope(deps.engine) as session:
        decision = crud.record_decision(
            session, action=action, task=task, reason="operator override",
            status="requested", origin="operator")
        crud.add_counters(session, increments={crud.counter_key(
            "adaptd_policy_decisions_total", {"action": action, "task": task}): 1})
        decision_id = int(decision.id or 0)
    return OverrideAccepted(decision=decision_id, action=action, task=task, status="requested")
