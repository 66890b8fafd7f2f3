"""What every router shares: the stores, the settings and the suite (``Deps``), and the one
way to refuse a request (``ApiError``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Depends, Request
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.engine import Engine

from daemon.api.models import Problem
from daemon.metrics import StoreCollector
from daemon.settings import Settings
from storage.stream import FeedbackStream, incr_metric
from storage.suite import Suite


class ApiError(Exception):
    """An answer other than 2xx; ``reason`` (one refusal) or ``rejections`` (reason -> count,
    for a batch) feed adaptd_feedback_rejected_total, counted by the app's handler."""

    def __init__(self, status: int, detail: str, *, reason: str | None = None,
                 errors: list[dict[str, Any]] | None = None,
                 rejections: dict[str, int] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.reason, self.errors = status, detail, reason, errors
        self.rejections = dict(rejections or {})
        if reason:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1


@dataclass
class Deps:
    settings: Settings
    suite: Suite
    engine: Engine
    client: redis.Redis
    stream: FeedbackStream
    collector: StoreCollector
    registry: CollectorRegistry

    def reject(self, reason: str, amount: int = 1) -> None:
        """Count a refusal; if Redis is down, count it in this process instead."""
        try:
            incr_metric(self.client, self.settings.key_prefix,
                        f"adaptd_feedback_rejected_total:{reason}", amount)
        except redis.RedisError:
            local = self.collector.local_rejections
            local[reason] = local.get(reason, 0.0) + amount


async def get_deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


AppDeps = Annotated[Deps, Depends(get_deps)]


def problem(description: str) -> dict[str, Any]:
    """An error answer for ``responses=``: the ``Problem`` body and what it means here."""
    return {"model": Problem, "description": description}


# Every route that reads SQL answers 503 when the database is down (the app's handler).
DATABASE_DOWN: dict[int | str, dict[str, Any]] = {503: problem("database unavailable")}
