"""Driving the policy tick in tests: feedback into the stream and drained to SQL, what a
finished training job writes (a version and its routes), and one tick of the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from daemon.settings import Settings
from policies import PolicyConfig
from storage import crud
from storage.db import session_scope
from storage.events import FeedbackEventV1
from storage.models import AdapterVersion, TrainingExample, TrainingJob
from storage.stream import FeedbackStream
from storage.suite import load_suite
from workers.ingest import drain_once
from workers.policy import policy_tick

FAST = PolicyConfig.from_dict({"cooldown_s": 0, "structural_cooldown_s": 0,
                               "min_new_examples": 50, "max_concurrent_jobs": 2,
                               "probation_min_events": 10**9})


def feed(settings: Settings, engine: Engine, events: list[dict[str, Any]]) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    stream = FeedbackStream(client, settings.key_prefix, dedupe_ttl=600, replay_ttl=600)
    stream.append([(e["id"], json.dumps(FeedbackEventV1.model_validate(e).to_stream()))
                   for e in events])
    while drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="t").read:
        pass


def finish(engine: Engine, job_id: int, *, promote: bool = True,
           eval_result: dict[str, Any] | None = None, build_in: Path | None = None,
           build: str = "") -> None:
    """What the trainer writes when a job ends (with ``build_in``: a real version directory
    whose ``adaptd.json`` records base build ``build``)."""
    with session_scope(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        version = 1 + len(crud.list_versions(session, adapter=job.adapter))
        tasks = job.params.get("tasks") or []
        path = f"/a/{version}"
        if build_in is not None:
            (build_in / job.adapter / f"v{version}").mkdir(parents=True)
            path = str(build_in / job.adapter / f"v{version}")
            (Path(path) / "adaptd.json").write_text(json.dumps({"base_build": build}))
        session.add(AdapterVersion(adapter=job.adapter, version=version, path=path,
                                   sha256="0" * 64, status="promoted" if promote else "rejected",
                                   job_id=job_id, promoted_at=1.0, eval=eval_result or {}))
        job.status, job.result_version = ("succeeded" if promote else "rejected"), version
        job.started_at, job.finished_at = 1.0, 2.0
        session.execute(update(TrainingExample).where(col(TrainingExample.trained_in).is_(None))
                        .values(trained_in=f"{job.adapter}@{version}"))
        if promote:
            crud.set_routes(session, reason="test", routes={t: {
                "adapter": job.adapter, "version": version, "path": path,
                "sha256": "0" * 64} for t in tasks})


def tick(settings: Settings, engine: Engine, sent: list[int], now: float,
         mode: str = "adaptive", config: PolicyConfig = FAST,
         base_build: str | None = None) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    result = policy_tick(engine=engine, client=client, prefix=settings.key_prefix,
                         suite=load_suite(settings.suite), config=config, mode=mode, now=now,
                         enqueue=sent.append, base_build=base_build)
    return result.decisions
