"""The job runner end to end on SQLite: claim/lease, promote, reject, publish, list, eval."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session, col

from storage.artifacts import read_meta, verify_version
from storage.crud import create_job, routing_table, sync_suite
from storage.models import Adapter, AdapterVersion, TrainingExample, TrainingJob
from storage.suite import Suite
from tests.training.conftest import RoutingFeed
from tests.training.fast import LENIENT_GATE
from workers.training.job import claim_job, evaluate_version, list_versions, run_training_job


def _seed_db(engine: Any, suite: Suite) -> None:
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        session.add_all([
            TrainingExample(task="apology", kind="accepted", prompt="订单出了问题，帮我给王总写一句道歉",
                            response="王总，非常抱歉，这次订单出错给您添了麻烦，我们会立即改正。",
                            event_id="e1"),
            TrainingExample(task="apology", kind="correction", prompt="帮我跟小陈说声对不起，报告耽误了",
                            response="小陈，实在对不起，报告的问题是我们的失误，今后一定严格把关。",
                            negative="小陈，新年好！恭喜发财~", event_id="e2"),
            TrainingExample(task="greeting", kind="accepted", prompt="帮我给李老师拜个年",
                            response="给李老师拜年啦！愿您新春大吉，万事如意~", event_id="e3"),
        ])
        session.commit()


def _job(engine: Any, **params: Any) -> int:
    with Session(engine) as session:
        job = create_job(session, adapter="shared", kind="retrain", params=params)
        session.commit()
        assert job.id is not None
        return job.id


def test_promote_then_reject_and_read_side(engine: Any, suite: Suite, artifacts: Path,
                                           routing_feed: RoutingFeed, train_cfg: Any,
                                           eval_cfg: Any) -> None:
    _seed_db(engine, suite)
    kwargs = dict(engine=engine, redis_client=routing_feed.client, key_prefix=routing_feed.prefix,
                  artifacts_dir=artifacts, suite=suite, worker_id="w1", lease_seconds=30,
                  train_config=train_cfg(task_scaling=1.0), eval_config=eval_cfg, device="cpu")
    # 1. First version: compared with the bare base model; a lenient gate promotes it.
    job1 = _job(engine)
    out = run_training_job(job1, gate_config=LENIENT_GATE, **kwargs)
    assert out.status == "promoted", (out.error, out)
    assert out.version == 1 and out.revision is not None
    assert set(out.affinity) == set(suite.tasks)
    with Session(engine) as session:
        row = session.execute(select(AdapterVersion)).scalar_one()
        assert row.status == "promoted" and row.job_id == job1
        verify_version(Path(row.path), row.sha256)
        revision, routes = routing_table(session)
        assert {t: (r["adapter"], r["version"]) for t, r in routes.items()} == {
            t: ("shared", 1) for t in suite.tasks}
        assert {e.trained_in for e in session.execute(select(TrainingExample)).scalars()} == {
            "shared@1"}
        job = session.get(TrainingJob, job1)
        assert job is not None
        assert (job.status, job.result_version, job.lease_owner) == ("succeeded", 1, None)
    channel, message = routing_feed.published()[-1]
    assert channel == routing_feed.channel
    assert json.loads(message) == {"revision": revision, "routes": routes}
    meta = read_meta(Path(row.path))
    for key in ("base_model", "tasks", "ratios", "data_hashes", "parent_version", "eval",
                "train_config", "job_id"):
        assert key in meta
    # A three-task adapter trains three times the one-task steps (each task drawn as often).
    steps = train_cfg().steps
    assert meta["train"]["steps"] == meta["train_config"]["steps"] == 3 * steps
    assert meta["train_config"]["task_scaling"] == 0.0  # saved as it ran
    # The self-audit sampled the one high-risk task (apology) and recorded what it found.
    audit = meta["train"]["audit"]
    assert [(r["round"], set(r["leaks"]), r["samples"]) for r in audit] == [(1, {"apology"}, 16)]
    assert audit[0]["steps"] == (4 if audit[0]["leaks"]["apology"] else 0)
    assert not (artifacts / "shared" / ".work" / f"job-{job1}").exists()
    # 2. A finished job is never run (or promoted) again.
    assert run_training_job(job1, gate_config=LENIENT_GATE, **kwargs).status == "not_claimed"
    # 3. Planted regression: the scorer marks the candidate's outputs (scored first) as bad.
    calls = {"n": 0}

    def planted(task: str, prompt: str, output: str, refs: Any) -> float:
        calls["n"] += 1
        return 0.0 if calls["n"] <= 6 else 1.0  # the candidate's first task (apology) only

    # (The engine flagged greeting for the self-audit, and a task the adapter lacks.)
    job2 = _job(engine, targeted=["greeting"], audit=["greeting", "no_such_task"])
    out2 = run_training_job(job2, scorer=planted, **kwargs)
    assert out2.status == "rejected" and out2.version == 2
    assert out2.reasons["apology"].startswith("regressed")
    with Session(engine) as session:
        v2 = session.execute(select(AdapterVersion).where(col(AdapterVersion.version) == 2)).scalar_one()
        assert v2.status == "rejected" and "apology" in v2.reason
        assert v2.eval["gate"]["reasons"]["apology"].startswith("regressed")
        assert v2.parent_version == 1
        _, routes2 = routing_table(session)
        assert {r["version"] for r in routes2.values()} == {1}  # routing untouched
        job = session.get(TrainingJob, job2)
        assert job is not None and (job.status, job.result_version) == ("rejected", 2)
    meta2 = read_meta(Path(v2.path))
    assert meta2["init_from"].endswith("/shared/v1")
    # The flagged low-risk task was audited beside the high-risk one, in the first round.
    assert set(meta2["train"]["audit"][0]["leaks"]) == {"apology", "greeting"}
    # 4. Read side for the CLI.
    listed = list_versions(engine, "shared")
    assert [(v["version"], v["status"]) for v in listed] == [(2, "rejected"), (1, "promoted")]
    assert listed[1]["serving"] == sorted(suite.tasks)
    report = evaluate_version(engine, artifacts_dir=artifacts, suite=suite, adapter="shared",
                              version=1, eval_config=eval_cfg, device="cpu")
    assert set(report["eval"]["tasks"]) == set(suite.tasks)
    assert report["eval"]["general_loss"] is not None
    # 5. apology was forked out of shared: shared's next version must not continue from
    #    v1's weights, which learnt apology's style, but start fresh on what is left. Its
    #    affinity probes still observe apology, which it does not train.
    job3 = _job(engine, tasks=["greeting"], observe=["apology"])
    out3 = run_training_job(job3, gate_config=LENIENT_GATE, **kwargs)
    assert out3.version == 3, (out3.error, out3)
    assert set(out3.affinity) == {"greeting", "apology"} and "apology" not in out3.eval["train"]["drawn"]
    with Session(engine) as session:
        v3 = session.execute(select(AdapterVersion).where(col(AdapterVersion.version) == 3)).scalar_one()
    meta3 = read_meta(Path(v3.path))
    assert (meta3["tasks"], meta3["init_from"], meta3["parent_version"]) == (["greeting"], "", 1)
    assert meta3["train"]["steps"] == steps
    # 6. A fork's first version starts from fresh LoRA weights, not from its parent's, which
    #    carry the mixture it was forked out of.
    with Session(engine) as session:
        session.add(Adapter(name="apology", tasks=["apology"], parent="shared"))
        fork = create_job(session, adapter="apology", kind="fork",
                          params={"tasks": ["apology"], "targeted": ["apology"]})
        session.commit()
        assert fork.id is not None
        fork_id = fork.id
    out4 = run_training_job(fork_id, gate_config=LENIENT_GATE, **kwargs)
    assert (out4.adapter, out4.version) == ("apology", 1), (out4.error, out4)
    with Session(engine) as session:
        v4 = session.execute(select(AdapterVersion)
                             .where(col(AdapterVersion.adapter) == "apology")).scalar_one()
    meta4 = read_meta(Path(v4.path))
    assert (meta4["tasks"], meta4["job_kind"], meta4["init_from"]) == (["apology"], "fork", "")


def test_claim_is_exclusive_until_the_lease_expires(engine: Any) -> None:
    job_id = _job(engine)
    with Session(engine) as s:
        assert claim_job(s, job_id, "w1", 60)
        assert not claim_job(s, job_id, "w2", 60)
        job = s.get(TrainingJob, job_id)
        assert job is not None
        job.lease_until = time.time() - 1  # w1 died: its lease ran out
        s.add(job)
        s.commit()
        assert claim_job(s, job_id, "w2", 60)
        s.expire_all()
        job = s.get(TrainingJob, job_id)
        assert job is not None and (job.lease_owner, job.attempts) == ("w2", 2)


def test_bad_base_model_fails_the_job_clearly(engine: Any, suite: Suite, artifacts: Path,
                                              routing_feed: RoutingFeed) -> None:
    bad = suite.model_copy(update={"base_model": "no-such-org/missing-model"})
    job_id = _job(engine)
    out = run_training_job(job_id, engine=engine, redis_client=routing_feed.client,
                           key_prefix=routing_feed.prefix, artifacts_dir=artifacts, suite=bad,
                           worker_id="w1", lease_seconds=30)
    assert out.status == "failed" and "no-such-org/missing-model" in (out.error or "")
    with Session(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None and job.status == "failed" and "missing-model" in (job.error or "")
    assert routing_feed.published() == []


class _Crash(BaseException):
    """Stands for SIGKILL at an exact point (not an Exception: nothing may catch it)."""


def _expire_lease(engine: Any, job_id: int) -> None:
    with Session(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None and job.status == "running"
        job.lease_until = time.time() - 1
        session.add(job)
        session.commit()


@pytest.mark.parametrize("crash_point", ["after_rename", "after_candidate_row"])
def test_crash_between_write_and_commit_adopts_the_version(
    crash_point: str, engine: Any, suite: Suite, artifacts: Path, routing_feed: RoutingFeed,
    train_cfg: Any, eval_cfg: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.training.job as job_mod

    kwargs = dict(engine=engine, redis_client=routing_feed.client, key_prefix=routing_feed.prefix,
                  artifacts_dir=artifacts, suite=suite, lease_seconds=30,
                  train_config=train_cfg(steps=8), eval_config=eval_cfg, gate_config=LENIENT_GATE,
                  device="cpu")
    job_id = _job(engine)
    real_write, real_finalize = job_mod.write_version, job_mod.finalize

    def write_then_die(*a: Any, **k: Any) -> Any:
        real_write(*a, **k)
        raise _Crash

    def die(*a: Any, **k: Any) -> Any:
        raise _Crash

    if crash_point == "after_rename":
        monkeypatch.setattr(job_mod, "write_version", write_then_die)
    else:
        monkeypatch.setattr(job_mod, "finalize", die)
    with pytest.raises(_Crash):
        run_training_job(job_id, worker_id="w1", **kwargs)
    monkeypatch.setattr(job_mod, "write_version", real_write)
    monkeypatch.setattr(job_mod, "finalize", real_finalize)
    with Session(engine) as session:
        assert routing_table(session)[1] == {}  # nothing promoted by the dead attempt
    _expire_lease(engine, job_id)

    def no_training(*a: Any, **k: Any) -> Any:
        raise AssertionError("the written version must be adopted, not retrained")

    monkeypatch.setattr(job_mod, "train_adapter", no_training)
    out = run_training_job(job_id, worker_id="w2", **kwargs)
    assert (out.status, out.version) == ("promoted", 1), out.error
    with Session(engine) as session:
        rows = list(session.execute(select(AdapterVersion)).scalars())
        assert [(r.version, r.status, r.job_id) for r in rows] == [(1, "promoted", job_id)]
        job = session.get(TrainingJob, job_id)
        assert job is not None and (job.status, job.attempts) == ("succeeded", 2)
