"""The app factory: one ``Deps`` per app, the routers, and the two error handlers that turn
refusals into 4xx and a database that is down into 503. Nothing here imports torch."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from daemon.api import feedback, health, routing, status, tasks
from daemon.api.deps import ApiError, Deps
from daemon.metrics import StoreCollector, build_registry
from daemon.settings import Settings
from storage.db import make_engine
from storage.stream import FeedbackStream
from storage.suite import Suite, load_suite

log = logging.getLogger(__name__)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several worker processes): settings from the
    environment, like every entry point."""
    return create_app(Settings())


_frozen = False


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Freeze what is built before serving (modules, the app, schemas: ~110k objects that live
    as long as the process), once per process, so full collections scan only what requests
    allocate. Unfrozen, each full collection stalls the server for 60-300 ms on a 2-core
    machine, and after a burst of batches they come every 1-2 s (python -m bench.ingest,
    single events after the burst). The asyncio Redis client is closed on shutdown."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    yield
    deps: Deps = app.state.deps
    if deps.stream.aclient is not None:
        await deps.stream.aclient.aclose()


def _async_client(url: str) -> redis.asyncio.Redis:
    """The feedback route's asyncio Redis client. Its pool holds at most 40 connections (as
    many as the thread pool has threads) and a request waits for a free one: under overload
    requests queue in the server instead of opening a connection each until the pool
    refuses."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=40, timeout=None, socket_timeout=2, socket_connect_timeout=2)
    return redis.asyncio.Redis.from_pool(pool)


def create_app(settings: Settings, *, engine: Engine | None = None,
               client: redis.Redis | None = None, suite: Suite | None = None) -> FastAPI:
    """Build the API for ``settings``; tests may pass their own engine, client and suite."""
    suite = suite or load_suite(settings.suite)
    engine = engine or make_engine(settings.database_url)
    client = client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    collector = StoreCollector(engine=engine, client=client, prefix=settings.key_prefix)
    deps = Deps(settings=settings, suite=suite, engine=engine, client=client, collector=collector,
                registry=build_registry(collector),
                stream=FeedbackStream(client, settings.key_prefix,
                                      dedupe_ttl=settings.dedupe_ttl_seconds,
                                      replay_ttl=2 * settings.webhook_tolerance_seconds + 60,
                                      aclient=_async_client(settings.redis_url)))
    app = FastAPI(title="adaptd", version="1", description="Continual training of LoRA adapters",
                  lifespan=_lifespan)
    app.state.deps = deps
    for module in (feedback, routing, tasks, status, health):
        app.include_router(module.router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        for reason, amount in exc.rejections.items():
            await run_in_threadpool(deps.reject, reason, amount)
        content: dict[str, Any] = {"detail": exc.detail}
        if exc.errors is not None:
            content["errors"] = exc.errors
        return JSONResponse(status_code=exc.status, content=content)

    @app.exception_handler(SQLAlchemyError)
    async def _sql_down(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.warning("SQL error: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "database unavailable"})

    return app
