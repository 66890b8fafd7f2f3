"""SIGKILL the training process at random moments: never a promoted partial version, and the
job completes on retry (one version, resumed from checkpoints or adopted, never duplicated)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from storage.artifacts import ArtifactError, verify_version
from storage.crud import create_job, routing_table, sync_suite
from storage.models import AdapterVersion, TrainingJob
from storage.suite import Suite

HERE = Path(__file__).parent
REPO = HERE.parent.parent
LEASE = 2


def _check_invariants(engine: Any, artifacts: Path) -> list[AdapterVersion]:
    """Whatever moment the kill hit: everything promoted or routed is complete and intact."""
    with Session(engine) as session:
        rows = list(session.execute(select(AdapterVersion)).scalars())
        _, routes = routing_table(session)
    for row in rows:
        if row.status in ("promoted", "candidate"):
            verify_version(Path(row.path), row.sha256)
    for route in routes.values():
        verify_version(Path(route["path"]), route["sha256"])
        assert ".tmp-" not in route["path"]
    return rows


def _wait_lease_expired(engine: Any, job_id: int) -> None:
    while True:
        with Session(engine) as session:
            job = session.get(TrainingJob, job_id)
            assert job is not None
            if job.status != "running" or (job.lease_until or 0) < time.time():
                return
        time.sleep(0.1)


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE / "job_runner.py"), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen[bytes], cond: Callable[[], bool], deadline: float) -> bool:
    """SIGKILL as soon as ``cond()`` holds (polled), or at ``deadline``; False if it exited."""
    while proc.poll() is None:
        if cond() or time.monotonic() >= deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    return False


def _after(trigger: Callable[[], bool], extra: float) -> tuple[Callable[[], bool], list[float]]:
    """A kill condition for ``_kill_when``: true ``extra`` seconds after ``trigger()`` first
    held; and the list that records when it first held (empty while it never has)."""
    hit: list[float] = []

    def fire() -> bool:
        if not hit and trigger():
            hit.append(time.monotonic())
        return bool(hit) and time.monotonic() - hit[0] >= extra

    return fire, hit


def _shared_retrain_job(engine: Any, suite: Suite) -> int:
    """A queued retrain of the test suite's ``shared`` adapter; its id."""
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job = create_job(session, adapter="shared", kind="retrain")
        session.commit()
        assert job.id is not None
        return job.id


def test_sigkill_at_random_moments(engine: Any, db_url: str, suite: Suite, artifacts: Path,
                                   train_cfg: Any) -> None:
    job_id = _shared_retrain_job(engine, suite)
    cfg = train_cfg(steps=40, checkpoint_every=3).model_dump_json()
    rng = random.Random(int(os.environ.get("ADAPTD_KILL_SEED", "20261121")))
    work = artifacts / "shared" / ".work" / f"job-{job_id}"
    shared = artifacts / "shared"

    def claimed_by(worker: str) -> Callable[[], bool]:
        def check() -> bool:
            with Session(engine) as session:
                row = session.get(TrainingJob, job_id)
                return row is not None and row.lease_owner == worker
        return check

    def has_checkpoint() -> bool:
        return (work / "ckpt.json").is_file()

    def has_version_files() -> bool:
        return shared.is_dir() and any(p.name.startswith((".tmp-v", "v")) for p in
                                       shared.iterdir() if p.name != ".work")

    # Three attempts, each killed at a random moment after an observable point: after the
    # claim (loading, data, early training), after a checkpoint (training, resume path), and
    # once a version directory (temporary or final) shows up (write/commit path).
    plan: list[tuple[str, float]] = [("claimed", 1.0), ("checkpoint", 0.3), ("version", 0.05)]
    killed = 0
    phases: list[str] = []
    for i, (point, spread) in enumerate(plan):
        worker = f"worker-{i}"
        trigger = {"claimed": claimed_by(worker), "checkpoint": has_checkpoint,
                   "version": has_version_files}[point]
        extra = rng.uniform(0.0, spread)
        proc = _spawn([db_url, str(artifacts), str(HERE / "suite.yaml"), str(job_id), worker,
                       str(LEASE), cfg])
        start = time.monotonic()
        fire, _ = _after(trigger, extra)
        if _kill_when(proc, fire, start + 120):
            killed += 1
            phases.append(f"kill {i} ({point}+{extra:.2f}s) after "
                          f"{time.monotonic() - start:.1f}s: checkpoint={has_checkpoint()} "
                          f"version_files={has_version_files()}")
        else:
            phases.append(f"attempt {i} ({point}) finished before the kill")
        _check_invariants(engine, artifacts)
        _wait_lease_expired(engine, job_id)
    # The retry after the last kill finishes the job (or, if the last kill landed after the
    # commit, finds nothing to do: a finished job is never run or promoted again).
    with Session(engine) as session:
        before = session.get(TrainingJob, job_id)
        done_before = before is not None and before.status == "succeeded"
    proc = _spawn([db_url, str(artifacts), str(HERE / "suite.yaml"), str(job_id), "worker-final",
                   str(LEASE), cfg])
    out, err = proc.communicate(timeout=240)
    print("\n".join(phases))  # shown with -s: where the kills landed
    rows = _check_invariants(engine, artifacts)
    with Session(engine) as session:
        job_row = session.get(TrainingJob, job_id)
        assert job_row is not None
    last = json.loads(out.decode().strip().splitlines()[-1])
    assert last["status"] == ("not_claimed" if done_before else "promoted"), err.decode()[-3000:]
    assert job_row.status == "succeeded", (job_row.status, job_row.error, err.decode()[-2000:])
    assert job_row.result_version == 1
    assert [(r.version, r.status) for r in rows] == [(1, "promoted")]  # one version, ever
    assert not [p for p in shared.iterdir() if p.name.startswith(".tmp-")]
    assert not work.exists()
    assert killed >= 2, phases  # the claim and checkpoint kills always land mid-job
    # Every kill after a claim costs an attempt; the version kill can land before the claim
    # when an earlier attempt already wrote the version.
    assert 2 <= job_row.attempts <= killed + (0 if done_before else 1)
    try:
        verify_version(shared / "v1")
    except ArtifactError as exc:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"final version corrupted: {exc}") from exc


def test_sigkill_inside_an_audit_round(engine: Any, db_url: str, suite: Suite, artifacts: Path,
                                       train_cfg: Any) -> None:
    """The self-audit trains after the main training: a kill there must not lose the job nor
    promote anything, and the retry resumes the round from its own checkpoint (rounds are
    deterministic: the same leaks are found again and the same steps continue)."""
    job_id = _shared_retrain_job(engine, suite)
    # A main training that barely moves the weights (lr 1e-6) leaves apology (high risk) as
    # leaky as the base model, which saw all three tasks' texts untagged, so the audit's round 1
    # finds leaks and trains; its checkpoints land every 3 steps. (A short training at the
    # normal lr instead left 0 of 48 answers leaking on one CPU kind and several on another.)
    cfg = train_cfg(steps=4, lr=1e-6, checkpoint_every=3,
                    audit={"rounds": 1, "samples": 48, "steps": 30}).model_dump_json()
    work = artifacts / "shared" / ".work" / f"job-{job_id}"
    round_ckpt = work / "audit-1" / "ckpt" / "ckpt.json"
    extra = random.Random(int(os.environ.get("ADAPTD_KILL_SEED", "20261121"))).uniform(0.0, 0.3)
    proc = _spawn([db_url, str(artifacts), str(HERE / "suite.yaml"), str(job_id), "worker-0",
                   str(LEASE), cfg])
    in_round, hit = _after(round_ckpt.is_file, extra)
    start = time.monotonic()
    assert _kill_when(proc, in_round, start + 180), "the job finished before the audit kill"
    assert hit, "no audit-round checkpoint appeared: the planted leak did not hold"
    rows = _check_invariants(engine, artifacts)
    assert not [r for r in rows if r.status == "promoted"]  # nothing promoted mid-audit
    _wait_lease_expired(engine, job_id)
    proc = _spawn([db_url, str(artifacts), str(HERE / "suite.yaml"), str(job_id), "worker-1",
                   str(LEASE), cfg])
    out, err = proc.communicate(timeout=240)
    assert json.loads(out.decode().strip().splitlines()[-1])["status"] == "promoted", \
        err.decode()[-3000:]
    rows = _check_invariants(engine, artifacts)
    assert [(r.version, r.status) for r in rows] == [(1, "promoted")]
    audit = json.loads((artifacts / "shared" / "v1" / "adaptd.json").read_text())["train"]["audit"]
    # The retry found leaks again and resumed the interrupted round from a checkpoint.
    assert audit[0]["leaks"]["apology"] > 0 and audit[0]["steps"] == 30
    assert audit[0]["resumed_from"] is not None and audit[0]["resumed_from"] >= 3, audit
    assert not work.exists()
