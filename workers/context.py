"""What a worker process needs, built by the daemon from its Settings.

Workers must not import ``daemon``; the daemon builds a :class:`WorkerContext` at its entry
point and attaches it to the Celery app, and each task reads it from there.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.engine import Engine

from storage.db import make_engine
from storage.suite import Suite, load_suite


@dataclass
class WorkerContext:
    """Connection settings and limits; connections open lazily in the worker process, after
    Celery forked it, so no socket is shared between processes."""

    redis_url: str
    database_url: str
    key_prefix: str
    artifacts_dir: Path
    suite_ref: str
    drain_batch: int = 1000
    drain_claim_idle_ms: int = 60_000
    drain_max_deliveries: int = 5
    train_lease_seconds: int = 120
    policy_mode: str = "adaptive"
    policy: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    train_device: str = "auto"
    # Serving replicas ({"url", "backend"}); empty: promotions are routed at once.
    serving_replicas: list[dict[str, Any]] = field(default_factory=list)
    serving_grace_seconds: float = 60.0
    serving_timeout_seconds: float = 30.0

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.database_url)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)

    @cached_property
    def suite(self) -> Suite:
        return load_suite(self.suite_ref)

    @cached_property
    def base_build(self) -> str | None:
        """The base build training jobs use now, resolved once per process without building
        it (the policy tick retrains adapters serving another build). A rebuilt base comes
        with new code or a new suite, i.e. a restart, which resolves it again."""
        from workers.training.base_model import expected_build

        return expected_build(self.suite, self.artifacts_dir)

    @property
    def consumer(self) -> str:
        """This process's name in the consumer group (a dead one's entries get reclaimed)."""
        return f"{socket.gethostname()}:{os.getpid()}"


def context_of(app: Any) -> WorkerContext:
    ctx = getattr(app, "adaptd_context", None)
    if not isinstance(ctx, WorkerContext):
        raise RuntimeError("the Celery app has no adaptd context; start it with `adaptd worker`")
    return ctx
