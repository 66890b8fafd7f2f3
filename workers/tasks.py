"""Celery tasks: thin. Each decodes small JSON arguments, declares its retries and calls a
plain function. Queues: ``ingest`` (drain), ``policy`` (engine ticks), ``train`` (jobs)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Task, shared_task
from redis import RedisError
from sqlalchemy.exc import OperationalError

from workers.context import context_of
from workers.ingest import drain_once

log = logging.getLogger(__name__)


@shared_task(
    name="adaptd.ingest.drain", bind=True, autoretry_for=(RedisError, OperationalError),
    retry_backoff=True, retry_backoff_max=30, max_retries=5, ignore_result=True,
)
def drain(self: Task, follow_up: bool = True) -> dict[str, Any]:
    """Drain one batch; if it was full, queue another right away to catch up."""
    ctx = context_of(self.app)
    result = drain_once(
        client=ctx.redis, engine=ctx.engine, prefix=ctx.key_prefix, consumer=ctx.consumer,
        batch=ctx.drain_batch, claim_idle_ms=ctx.drain_claim_idle_ms,
        max_deliveries=ctx.drain_max_deliveries,
    )
    if follow_up and result.read >= ctx.drain_batch:
        self.apply_async(kwargs={"follow_up": True}, queue="ingest")
    return dataclasses.asdict(result)
