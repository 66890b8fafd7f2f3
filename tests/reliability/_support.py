"""Helpers of the reliability tests: scale, the API as a subprocess, SQL checks.

``ADAPTD_RELIABILITY_SCALE=full`` runs the long versions (100,000 events, 10,000+ fuzz cases,
60 s of load); the default ("ci") keeps every test under a minute.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from daemon.settings import Settings
from storage import crud
from storage.models import FeedbackEvent, TrainingExample
from tests.support.processes import adaptd_env, api_server

FULL = os.environ.get("ADAPTD_RELIABILITY_SCALE", "ci").strip().lower() == "full"


def scaled(ci: Any, full: Any) -> Any:
    return full if FULL else ci


@contextlib.contextmanager
def api_process(settings: Settings, workdir: Path, *, log_level: str = "WARNING",
                ) -> Iterator[tuple[Any, str, Path]]:
    """`adaptd serve` as a subprocess for ``settings``; yields (Popen, base URL, log path)."""
    extra = {"ADAPTD_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value(),
             "ADAPTD_LOG_LEVEL": log_level, "ADAPTD_SUITE": settings.suite}
    token = settings.admin_token_value()
    if token:
        extra["ADAPTD_ADMIN_TOKEN"] = token
    env = adaptd_env(redis_url=settings.redis_url, database_url=settings.database_url,
                     workdir=workdir, prefix=settings.key_prefix, extra=extra)
    log = workdir / "api.log"
    with api_server(env, log) as (proc, port):
        yield proc, f"http://127.0.0.1:{port}", log


def sql_ids(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.execute(select(FeedbackEvent.id)).scalars())  # type: ignore[call-overload]


def sql_summary(engine: Engine) -> dict[str, float]:
    with Session(engine) as session:
        rows = session.execute(select(func.count()).select_from(FeedbackEvent)).scalar() or 0
        examples = session.execute(select(func.count()).select_from(TrainingExample)
                                   .where(col(TrainingExample.kind) != "seed")).scalar() or 0
        counters = crud.read_counters(session)
    return {
        "rows": int(rows), "examples": int(examples),
        "events_counter": sum(v for n, _, v in counters if n == "adaptd_feedback_events_total"),
        "crosstalk_counter": sum(v for n, _, v in counters
                                 if n == "adaptd_crosstalk_events_total"),
    }


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
