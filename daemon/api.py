"""The HTTP API (DESIGN section 4). Every refusal is a 4xx with a clear message; a store that
is down is a 503 with nothing stored. This module must never import torch."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from daemon.metrics import StoreCollector, build_registry
from daemon.settings import Settings
from daemon.webhooks import SignatureError, verify
from storage import crud
from storage.db import make_engine, session_scope
from storage.events import FeedbackEventV1
from storage.stream import ID_RE, FeedbackStream, incr_metric
from storage.suite import Suite, load_suite

log = logging.getLogger(__name__)
ADMIN_ACTIONS = ("retrain", "rebalance", "fork", "merge")


class ApiError(Exception):
    """An answer other than 2xx; ``reason`` feeds adaptd_feedback_rejected_total."""

    def __init__(self, status: int, detail: str, *, reason: str | None = None,
                 errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.reason, self.errors = status, detail, reason, errors


@dataclass
class Deps:
    settings: Settings
    suite: Suite
    engine: Engine
    client: redis.Redis
    stream: FeedbackStream
    collector: StoreCollector

    def reject(self, reason: str, amount: int = 1) -> None:
        """Count a refusal; if Redis is down, count it in this process instead."""
        try:
            incr_metric(self.client, self.settings.key_prefix,
                        f"adaptd_feedback_rejected_total:{reason}", amount)
        except redis.RedisError:
            local = self.collector.local_rejections
            local[reason] = local.get(reason, 0.0) + amount


def _printable(text: str) -> str:
    """Text that encodes to UTF-8 (lone surrogates from JSON escapes become \\udXXX)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _event_errors(index: int, raw: Any, exc: ValidationError) -> dict[str, Any]:
    # Only loc/msg/type: the input itself may be huge or hold what the user typed.
    event_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    return {
        "index": index,
        "id": _printable(event_id[:128]) if event_id else None,
        "errors": [{"loc": [_printable(str(p)[:128]) for p in e["loc"]],
                    "msg": _printable(e["msg"]), "type": e["type"]}
                   for e in exc.errors()[:20]],
    }


def _parse_events(body: bytes, deps: Deps) -> list[FeedbackEventV1]:
    """Body bytes -> validated events, or an ApiError naming every bad event."""
    try:
        text_body = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})",
                       reason="schema") from None
    try:
        doc = json.loads(text_body)
    except RecursionError:
        raise ApiError(400, "JSON is nested too deeply", reason="schema") from None
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", reason="schema") from None
    if isinstance(doc, dict) and "events" in doc:
        if set(doc) != {"events"} or not isinstance(doc["events"], list):
            raise ApiError(422, 'a batch is {"events": [...]} and nothing else',
                           reason="schema")
        raw_events: list[Any] = doc["events"]
    elif isinstance(doc, dict):
        raw_events = [doc]
    else:
        raise ApiError(422, 'expected one event object or {"events": [...]}', reason="schema")
    if not raw_events:
        raise ApiError(422, "the batch holds no events", reason="schema")
    if len(raw_events) > deps.settings.max_batch_events:
        raise ApiError(413, f"a batch holds at most {deps.settings.max_batch_events} events",
                       reason="too_large")
    events: list[FeedbackEventV1] = []
    errors: list[dict[str, Any]] = []
    unknown = 0
    known = deps.suite.tasks
    for i, raw in enumerate(raw_events):
        try:
            event = FeedbackEventV1.model_validate(raw)
        except (ValidationError, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                errors.append({"index": i, "id": None, "errors": [{"loc": [], "msg":
                               "nested too deeply", "type": "recursion"}]})
            else:
                errors.append(_event_errors(i, raw, exc))
            continue
        bad = [name for name in (event.task, event.crosstalk_source)
               if name is not None and name not in known]
        if bad:
            unknown += 1
            errors.append({"index": i, "id": event.id, "errors": [
                {"loc": ["task" if bad[0] == event.task else "crosstalk_source"],
                 "msg": f"unknown task {bad[0]!r}; configured: {sorted(known)}",
                 "type": "unknown_task"}]})
            continue
        events.append(event)
    if errors:
        if unknown:
            deps.reject("unknown_task", unknown)
        if len(errors) > unknown:
            deps.reject("schema", len(errors) - unknown)
        raise ApiError(422, f"{len(errors)} of {len(raw_events)} events are invalid; "
                       "nothing of this batch was stored", errors=errors)
    return events


def _accept(body: bytes, headers: dict[str, str], deps: Deps) -> dict[str, int]:
    """Verify, validate and append one POST; runs in the thread pool."""
    s = deps.settings
    try:
        webhook_id = verify(s.webhook_secrets(), headers, body, now=time.time(),
                            tolerance=s.webhook_tolerance_seconds)
    except SignatureError as exc:
        raise ApiError(401, str(exc), reason="signature") from None
    if not ID_RE.match(webhook_id):
        raise ApiError(401, "webhook-id must be 1..128 characters of [A-Za-z0-9._:-]",
                       reason="signature")
    events = _parse_events(body, deps)
    payloads = [(e.id, json.dumps(e.to_stream(), ensure_ascii=False)) for e in events]
    try:
        result = deps.stream.append(payloads, webhook_id=webhook_id)
    except redis.RedisError as exc:
        log.warning("feedback refused, Redis unavailable: %s", exc)
        raise ApiError(503, "event store unavailable; nothing was stored, retry later",
                       reason="unavailable") from None
    if result.replay:
        deps.reject("replay")
        return {"accepted": 0, "duplicates": result.duplicates, "replay": 1}
    if result.duplicates:
        # The events are stored; if Redis fails now only the duplicate count is lost.
        with contextlib.suppress(redis.RedisError):
            incr_metric(deps.client, s.key_prefix, "adaptd_feedback_duplicates_total",
                        result.duplicates)
    return {"accepted": result.accepted, "duplicates": result.duplicates}


async def _read_capped(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"body larger than {limit} bytes", reason="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several worker processes): settings from the
    environment, like every entry point."""
    return create_app(Settings())


def create_app(settings: Settings, *, engine: Engine | None = None,
               client: redis.Redis | None = None, suite: Suite | None = None) -> FastAPI:
    """Build the API for ``settings``; tests may pass their own engine, client and suite."""
    suite = suite or load_suite(settings.suite)
    engine = engine or make_engine(settings.database_url)
    client = client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    collector = StoreCollector(engine=engine, client=client, prefix=settings.key_prefix)
    deps = Deps(settings=settings, suite=suite, engine=engine, client=client, collector=collector,
                stream=FeedbackStream(client, settings.key_prefix,
                                      dedupe_ttl=settings.dedupe_ttl_seconds,
                                      replay_ttl=2 * settings.webhook_tolerance_seconds + 60))
    registry = build_registry(collector)
    app = FastAPI(title="adaptd", version="1", description="Continual training of LoRA adapters")
    app.state.deps = deps

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.reason:
            await run_in_threadpool(deps.reject, exc.reason)
        content: dict[str, Any] = {"detail": exc.detail}
        if exc.errors is not None:
            content["errors"] = exc.errors
        return JSONResponse(status_code=exc.status, content=content)

    @app.exception_handler(SQLAlchemyError)
    async def _sql_down(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.warning("SQL error: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "database unavailable"})

    @app.post("/v1/feedback", status_code=202)
    async def post_feedback(request: Request) -> JSONResponse:
        body = await _read_capped(request, settings.max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        result = await run_in_threadpool(_accept, body, headers, deps)
        return JSONResponse(status_code=202, content=result)

    @app.get("/v1/routing")
    def get_routing(request: Request) -> Response:
        with Session(engine) as session:
            revision, routes = crud.routing_table(session)
        etag = f'"routing-{revision}"'
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse({"revision": revision, "routes": routes}, headers={"ETag": etag})

    @app.get("/v1/tasks")
    def get_tasks() -> dict[str, Any]:
        with Session(engine) as session:
            buffers = crud.buffered_counts(session)
            tasks = {
                t.name: {"risk": t.risk, "tone": t.tone, "adapter": t.adapter, "ratio": t.ratio,
                         "quality": t.quality, "crosstalk_rate": t.crosstalk_rate,
                         "crosstalk_source": t.crosstalk_source, "degraded": t.degraded,
                         "buffered_examples": buffers.get(t.name, 0)}
                for t in crud.list_tasks(session)
            }
        return {"tasks": tasks}

    @app.get("/v1/decisions")
    def get_decisions(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        with Session(engine) as session:
            rows = crud.list_decisions(session, limit=limit)
        return {"decisions": [r.model_dump() for r in rows]}

    @app.get("/v1/status")
    def get_status() -> dict[str, Any]:
        """How far the loop has got: stored and not yet observed events, lag, jobs (active, and
        finished but not yet accounted by the policy engine), routing."""
        with Session(engine) as session:
            revision, _ = crud.routing_table(session)
            status: dict[str, Any] = {"events": crud.count_feedback(session),
                      "unobserved": crud.count_unobserved(session),
                      "jobs_active": len(crud.active_jobs(session)),
                      "jobs_unaccounted": crud.count_unaccounted_jobs(session),
                      "routing_revision": revision}
        try:
            status["ingest_lag"] = deps.stream.lag()
        except redis.RedisError:
            status["ingest_lag"] = None
        return status

    @app.get("/v1/adapters")
    def get_adapters() -> dict[str, Any]:
        """Adapters with their tasks and ratios, and every version with status and scores."""
        with Session(engine) as session:
            adapters: dict[str, dict[str, Any]] = {
                a.name: {"tasks": a.tasks, "ratios": a.ratios, "status": a.status,
                         "parent": a.parent, "versions": []}
                for a in crud.list_adapters(session)}
            for v in crud.list_versions(session):
                entry = adapters.setdefault(v.adapter, {"tasks": [], "ratios": {},
                                                        "status": "unknown", "versions": []})
                entry["versions"].append(v.model_dump(exclude={"path"}))
        return {"adapters": adapters}

    @app.get("/v1/jobs")
    def get_jobs(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        """Training jobs, newest first."""
        with Session(engine) as session:
            jobs = crud.list_jobs(session, limit=limit)
        return {"jobs": [j.model_dump(exclude={"lease_owner"}) for j in jobs]}

    @app.post("/v1/tasks/{task}/{action}", status_code=202)
    def post_override(task: str, action: str, request: Request) -> dict[str, Any]:
        token = settings.admin_token_value()
        if token is None:
            raise ApiError(403, "admin endpoints are off: set ADAPTD_ADMIN_TOKEN to enable them")
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise ApiError(401, "missing 'Authorization: Bearer <admin token>'")
        if not hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
            raise ApiError(403, "wrong admin token")
        if task not in suite.tasks:
            raise ApiError(404, f"unknown task {task[:64]!r}")
        if action not in ADMIN_ACTIONS:
            raise ApiError(404, f"unknown action {action[:32]!r}; one of {list(ADMIN_ACTIONS)}")
        with session_scope(engine) as session:
            decision = crud.record_decision(
                session, action=action, task=task, reason="operator override",
                status="requested", origin="operator")
            crud.add_counters(session, increments={crud.counter_key(
                "adaptd_policy_decisions_total", {"action": action, "task": task}): 1})
        return {"decision": decision.id, "action": action, "task": task, "status": "requested"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            client.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except SQLAlchemyError as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ok else 503,
                            content={"status": "ready" if ok else "not ready", **checks})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
