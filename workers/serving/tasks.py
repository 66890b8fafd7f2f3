"""Celery glue of the serving sync: the ``serving`` queue's task and how others request it."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from redis import RedisError
from sqlalchemy.exc import OperationalError

from workers.context import WorkerContext, context_of

log = logging.getLogger(__name__)

SYNC_TASK = "adaptd.serving.sync"
LOCK_SECONDS = 300


def run_sync(ctx: WorkerContext) -> dict[str, Any]:
    """One sync round under a Redis lock (a timer round and a promotion's round never run at
    once), then publish the routing table if a rollout was routed."""
    from workers.serving.backends import make_backend
    from workers.serving.sync import sync_once
    from workers.training.promote import publish_routing

    backends = [make_backend(spec, timeout=ctx.serving_timeout_seconds)
                for spec in ctx.serving_replicas]
    lock = ctx.redis.lock(f"{ctx.key_prefix}lock:serving", timeout=LOCK_SECONDS,
                          blocking_timeout=LOCK_SECONDS)
    if not lock.acquire():
        return {"skipped": "another sync holds the lock"}
    try:
        result = sync_once(engine=ctx.engine, backends=backends,
                           grace_s=ctx.serving_grace_seconds)
    finally:
        try:
            lock.release()
        except RedisError:
            log.warning("serving lock expired during the sync")
    if result.routed:
        publish_routing(ctx.engine, ctx.redis, ctx.key_prefix)
    return result.to_dict()


@shared_task(
    name=SYNC_TASK, bind=True, autoretry_for=(RedisError, OperationalError),
    retry_backoff=True, retry_backoff_max=30, max_retries=3, ignore_result=True,
)
def serving_sync(self: Task) -> dict[str, Any]:
    """Reconcile every configured replica once (timer, promotion, rollback)."""
    ctx = context_of(self.app)
    if not ctx.serving_replicas:
        return {"skipped": "no serving replicas configured"}
    return run_sync(ctx)


def request_sync(app: Any) -> None:
    """Queue a sync round now (after a promotion or a rollback commit); best effort: the
    timer runs one within an interval anyway."""
    ctx = context_of(app)
    if not ctx.serving_replicas:
        return
    try:
        app.send_task(SYNC_TASK, queue="serving")
    except Exception:  # the broker down must not fail the committed promotion
        log.exception("could not queue a serving sync")
