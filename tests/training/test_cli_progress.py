"""`adaptd train` with --json: stdout stays one JSON document, the live progress stays off;
`--queue --follow` follows the job another process runs through the Redis channel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlmodel import Session, col

from storage.crud import sync_suite
from storage.models import TrainingJob
from storage.progress import read_job
from storage.suite import Suite
from tests.training.conftest import REPO, SUITE_PATH
from tests.training.fast import LENIENT_GATE
from workers.training.job import run_training_job


def _env(db_url: str, redis_url: str, prefix: str, artifacts: Path, train_cfg: Any,
         eval_cfg: Any) -> dict[str, str]:
    return {**os.environ, "ADAPTD_DATABASE_URL": db_url, "ADAPTD_REDIS_URL": redis_url,
            "ADAPTD_KEY_PREFIX": prefix, "ADAPTD_ARTIFACTS_DIR": str(artifacts),
            "ADAPTD_SUITE": str(SUITE_PATH), "ADAPTD_TRAIN_DEVICE": "cpu",
            "ADAPTD_TRAIN": json.dumps(train_cfg().model_dump(mode="json")),
            "ADAPTD_EVAL": json.dumps(eval_cfg.model_dump(mode="json")),
            "PYTHONPATH": str(REPO)}


def _cli(*args: str, env: dict[str, str], cwd: Path, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_train_json_prints_only_the_outcome(engine: Any, db_url: str, suite: Suite,
                                            artifacts: Path, redis_url: str, prefix: str,
                                            train_cfg: Any, eval_cfg: Any,
                                            tmp_path: Path) -> None:
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        session.commit()
    env = _env(db_url, redis_url, prefix, artifacts, train_cfg, eval_cfg)
    proc = _cli("train", "--adapter", "shared", "--json", env=env, cwd=tmp_path)
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-3000:]
    outcome = json.loads(out)  # the whole of stdout is one JSON document
    assert outcome["status"] in ("promoted", "rejected") and outcome["version"] == 1
    assert "  training  step" not in err and "evaluating" not in err  # nothing drawn into a pipe
    # What other processes saw of it is on the channel.
    state = read_job(redis.Redis.from_url(redis_url), prefix, outcome["job_id"])
    assert state is not None
    assert (state["phase"], state["status"]) == ("done", outcome["status"])


def test_train_queue_follow_reports_the_job_another_process_runs(
        engine: Any, db_url: str, suite: Suite, artifacts: Path, redis_url: str, prefix: str,
        train_cfg: Any, eval_cfg: Any, tmp_path: Path) -> None:
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        session.commit()
    env = _env(db_url, redis_url, prefix, artifacts, train_cfg, eval_cfg)
    proc = _cli("train", "--adapter", "shared", "--queue", "--follow", "--json", env=env,
                cwd=tmp_path)
    try:
        # Play the train worker: the queued message stays under this test's key prefix.
        job_id = None
        deadline = time.monotonic() + 120
        while job_id is None and time.monotonic() < deadline:
            with Session(engine) as session:
                job_id = session.execute(select(col(TrainingJob.id))).scalar()
            time.sleep(0.2)
        assert job_id is not None and proc.poll() is None  # still following a queued job
        out = run_training_job(
            job_id, engine=engine, redis_client=redis.Redis.from_url(redis_url),
            key_prefix=prefix, artifacts_dir=artifacts, suite=suite, worker_id="w1",
            lease_seconds=30, train_config=train_cfg(), eval_config=eval_cfg,
            gate_config=LENIENT_GATE, device="cpu")
        assert out.status == "promoted", out.error
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    state = json.loads(stdout)
    assert (state["job"], state["phase"], state["status"], state["version"]) == (
        job_id, "done", "promoted", 1)
