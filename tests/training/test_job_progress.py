"""A training job tells other processes what it is doing: base build, training steps, audit
rounds, evaluation, then its outcome, on the Redis progress channel."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import redis
from sqlmodel import Session

from storage.crud import create_job, sync_suite
from storage.progress import read_job
from storage.suite import Suite
from tests.training.fast import LENIENT_GATE
from workers.training.job import run_training_job


class Reader(threading.Thread):
    """Another reader of the channel, polling as the demo does (faster, to see short phases)."""

    def __init__(self, url: str, prefix: str, job_id: int) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix, self.job_id = redis.Redis.from_url(url), prefix, job_id
        self.seen: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            state = read_job(self.client, self.prefix, self.job_id)
            if state and (not self.seen or state != self.seen[-1]):
                self.seen.append(state)


def test_a_job_publishes_its_phases_to_a_reader(engine: Any, suite: Suite, artifacts: Path,
                                                redis_url: str, prefix: str, train_cfg: Any,
                                                eval_cfg: Any) -> None:
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job_id = create_job(session, adapter="shared", kind="retrain", params={}).id
        session.commit()
    assert job_id is not None
    heard: list[dict[str, Any]] = []
    reader = Reader(redis_url, prefix, job_id)
    reader.start()
    try:
        out = run_training_job(
            job_id, engine=engine, redis_client=redis.Redis.from_url(redis_url),
            key_prefix=prefix, artifacts_dir=artifacts, suite=suite, worker_id="w1",
            lease_seconds=30, train_config=train_cfg(), eval_config=eval_cfg,
            gate_config=LENIENT_GATE, device="cpu", progress=heard.append)
    finally:
        reader.stop.set()
        reader.join(5)
    assert out.status == "promoted", out.error
    # The in-process listener hears every step, in order.
    phases = [s["phase"] for s in heard]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["prepare", "train", "audit", "eval", "write", "done"]
    train = [s for s in heard if s["phase"] == "train"]
    assert [s["step"] for s in train] == list(range(1, len(train) + 1))
    assert train[-1]["total"] == len(train) and "loss" in train[-1]
    evals = [s["step"] for s in heard if s["phase"] == "eval"]
    assert evals[0] == 0 and evals[-1] == 2 * len(suite.tasks)
    assert all(s["adapter"] == "shared" and s["version"] == 1 for s in heard)
    # Another reader sees the phases through Redis, and the outcome stays there.
    seen = [s["phase"] for s in reader.seen]
    assert {"train", "audit", "eval"} <= set(seen), seen
    last = read_job(redis.Redis.from_url(redis_url), prefix, job_id)
    assert last is not None
    assert (last["phase"], last["status"], last["version"]) == ("done", "promoted", 1)
    assert last["updated_at"] >= last["started_at"]


def test_the_base_build_reports_its_steps(suite: Suite, tmp_path: Path) -> None:
    from workers.training.tiny import build_tiny

    heard: list[dict[str, Any]] = []
    build_tiny(suite, tmp_path, spec={"pretrain_steps": 5, "pretrain_batch": 4},
               progress=heard.append)
    assert [(e["step"], e["steps"]) for e in heard] == [(i, 5) for i in range(1, 6)]
    assert all(e["loss"] > 0 for e in heard)
    assert (tmp_path / "config.json").is_file()
