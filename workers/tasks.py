"""Celery tasks: thin. Each decodes small JSON arguments, declares its retries and calls a
plain function. Queues: ``ingest`` (drain), ``policy`` (engine ticks), ``train`` (jobs),
``serving`` (the serving sync: workers/serving/tasks.py)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Task, shared_task
from redis import RedisError
from sqlalchemy.exc import OperationalError

from workers.context import context_of
from workers.ingest import drain_once
from workers.serving.tasks import request_sync

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


@shared_task(
    name="adaptd.policy.tick", bind=True, autoretry_for=(RedisError, OperationalError),
    retry_backoff=True, retry_backoff_max=60, max_retries=3, ignore_result=True,
)
def policy_tick(self: Task) -> dict[str, Any]:
    """Run the policy engine once; hand new training jobs to the train queue."""
    from policies import PolicyConfig
    from workers.policy import policy_tick as tick

    ctx = context_of(self.app)
    result = tick(
        engine=ctx.engine, client=ctx.redis, prefix=ctx.key_prefix, suite=ctx.suite,
        config=PolicyConfig.from_dict(ctx.policy), mode=ctx.policy_mode,
        enqueue=lambda job_id: train_job.apply_async(args=[job_id], queue="train"),
        base_build=ctx.base_build,
    )
    if any(d.get("action") == "rollback" and d.get("status") == "applied"
           for d in result.decisions):
        request_sync(self.app)
    return {"observed": result.observed, "decisions": len(result.decisions),
            "jobs": result.jobs, "skipped": result.skipped}


@shared_task(
    name="adaptd.train.run_job", bind=True, acks_late=True, ignore_result=True,
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3,
)
def train_job(self: Task, job_id: int) -> dict[str, Any]:
    """Run one training job (the job row's lease makes a redelivery harmless)."""
    from policies import PolicyConfig
    from workers.training.config import DataConfig, EvalConfig, GateConfig, TrainConfig
    from workers.training.job import run_training_job

    ctx = context_of(self.app)
    outcome = run_training_job(
        int(job_id), engine=ctx.engine, redis_client=ctx.redis, key_prefix=ctx.key_prefix,
        artifacts_dir=ctx.artifacts_dir, suite=ctx.suite, worker_id=ctx.consumer,
        lease_seconds=ctx.train_lease_seconds, train_config=TrainConfig(**ctx.train),
        eval_config=EvalConfig(**ctx.eval), data_config=DataConfig(**ctx.data),
        gate_config=GateConfig(**ctx.gate), device=ctx.train_device,
        two_step=bool(ctx.serving_replicas),
        ratio_config=PolicyConfig.from_dict(ctx.policy).ratios,
    )
    if outcome.status == "promoted":
        request_sync(self.app)
    return outcome.to_dict()
