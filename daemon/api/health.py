"""Liveness, readiness and the Prometheus exposition: GET /healthz, /readyz, /metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from daemon.api.deps import AppDeps
from daemon.api.models import Health, Readiness
from storage import crud

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Redis and the database reachable",
            responses={503: {"model": Readiness, "description": "a store is unreachable"}})
def readyz(response: Response, deps: AppDeps) -> Readiness:
    try:
        deps.client.ping()
        redis_state = "ok"
    except redis.RedisError as exc:
        redis_state = f"unavailable: {type(exc).__name__}"
    try:
        with Session(deps.engine) as session:
            crud.ping(session)
        database_state = "ok"
    except SQLAlchemyError as exc:
        database_state = f"unavailable: {type(exc).__name__}"
    ok = redis_state == database_state == "ok"
    response.status_code = 200 if ok else 503
    return Readiness(status="ready" if ok else "not ready", redis=redis_state,
                     database=database_state)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus exposition",
            responses={200: {"description": "Prometheus text format; a store that fails the "
                                            "scrape shows as adaptd_scrape_errors"}})
def metrics(deps: AppDeps) -> Response:
    return Response(generate_latest(deps.registry), media_type=CONTENT_TYPE_LATEST)
