"""The policy tick and the engine's adapters against real SQL and Redis: first versions the
gate keeps rejecting, retrains after a base rebuild, operator overrides, and the Adapter table
as the engine's membership (a fork, a merge, a merge the gate rejects).

Training is stood in for by writing what a finished job writes (tests/support/policy_tick.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from daemon.settings import Settings
from storage import crud
from storage.db import session_scope
from storage.models import Adapter, PolicyDecision, PolicyStateRow, TrainingJob
from storage.suite import load_suite
from tests.support.policy_tick import finish, tick


def test_operator_override_is_applied_by_the_tick(settings: Settings, engine: Engine) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    finish(engine, sent[0])
    with session_scope(engine) as session:
        crud.record_decision(session, action="fork", task="thanks", reason="operator override",
                             status="requested", origin="operator")
    decisions = tick(settings, engine, sent, now=2000.0)
    assert [d["action"] for d in decisions] == ["fork"]
    with Session(engine) as session:
        row = session.execute(select(PolicyDecision).where(
            PolicyDecision.origin == "operator")).scalars().one()
        assert row.status == "applied"
        job = session.get(TrainingJob, sent[-1])
        assert job is not None and job.kind == "fork"


def test_a_first_version_the_gate_keeps_rejecting_is_not_retried_forever(
        settings: Settings, engine: Engine) -> None:
    sent: list[int] = []
    for i in range(5):
        decisions = tick(settings, engine, sent, now=1000.0 + i)
        if i < 3:
            assert [d["reason"].split(":")[0] for d in decisions] == ["bootstrap"]
            finish(engine, sent[-1], promote=False)
    assert len(sent) == 3
    with Session(engine) as session:
        holds = [d for d in crud.list_decisions(session) if d.action == "hold"]
    assert len(holds) == 1 and holds[0].reason.startswith("hold bootstrap: 3 first versions")


@pytest.mark.parametrize("mode", ["adaptive", "static"])
def test_adapters_serving_another_base_build_retrain_once_each(
        settings: Settings, engine: Engine, tmp_path: Path, mode: str) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, mode=mode, base_build="tiny-old")
    finish(engine, sent[0], build_in=tmp_path, build="tiny-old")
    # Same build: nothing to do.
    assert tick(settings, engine, sent, now=1010.0, mode=mode, base_build="tiny-old") == []
    # The base was rebuilt: one retrain of the served adapter, saying why.
    decisions = tick(settings, engine, sent, now=1020.0, mode=mode, base_build="tiny-new")
    assert [(d["action"], d["adapter"]) for d in decisions] == [("retrain", "shared")]
    assert decisions[0]["reason"].startswith("base rebuilt: shared serves v1, trained on base "
                                             "build 'tiny-old'; the base is now 'tiny-new'")
    with Session(engine) as session:
        job = session.get(TrainingJob, sent[-1])
        assert job is not None and job.params["rebuild"] == "tiny-new"
        assert job.params["tasks"] == sorted(load_suite(settings.suite).tasks)
    # While it runs, no second job; once promoted on the new build, quiet again.
    assert tick(settings, engine, sent, now=1030.0, mode=mode, base_build="tiny-new") == []
    finish(engine, sent[-1], build_in=tmp_path, build="tiny-new")
    assert tick(settings, engine, sent, now=1040.0, mode=mode, base_build="tiny-new") == []
    assert len(sent) == 2


def test_a_rebuild_retrain_the_gate_keeps_rejecting_gives_up_with_a_hold(
        settings: Settings, engine: Engine, tmp_path: Path) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    finish(engine, sent[0], build_in=tmp_path, build="tiny-old")
    seeds = []
    for i in range(5):
        tick(settings, engine, sent, now=1010.0 + i, base_build="tiny-new")
        if i < 3:
            with Session(engine) as session:
                job = session.get(TrainingJob, sent[-1])
                assert job is not None
                seeds.append((job.params.get("train") or {}).get("seed"))
            finish(engine, sent[-1], promote=False)
    assert len(sent) == 4 and seeds == [None, 1, 2]  # each retry draws its own batches
    with Session(engine) as session:
        holds = [d for d in crud.list_decisions(session) if d.action == "hold"]
    assert len(holds) == 1 and holds[0].reason.startswith("hold rebuild: 3 versions of shared")


def _request(engine: Engine, action: str, task: str) -> None:
    with session_scope(engine) as session:
        crud.record_decision(session, action=action, task=task, reason="operator override",
                             status="requested", origin="operator")


def _adapters(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Adapter table and the engine's adapters, as (tasks, ratios, status)."""
    with Session(engine) as session:
        rows = {a.name: (sorted(a.tasks), a.ratios, a.status) for a in crud.list_adapters(session)}
        row = session.get(PolicyStateRow, 1)
        assert row is not None
        engine_adapters = {n: (sorted(a["tasks"]), a["ratios"]["weights"], "active")
                           for n, a in row.state["engine"]["adapters"].items()}
    return rows, engine_adapters


def test_the_adapter_table_is_the_engines_membership_and_ratios(settings: Settings,
                                                                engine: Engine) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    finish(engine, sent[0])
    _request(engine, "fork", "thanks")
    tick(settings, engine, sent, now=2000.0)
    rows, engine_adapters = _adapters(engine)
    assert rows == engine_adapters
    shared_tasks, shared_ratios, _ = rows["shared"]
    assert "thanks" not in shared_tasks and rows["thanks"][:2] == (["thanks"], {"thanks": 1.0})
    # The shared adapter's ratios lost the forked task the moment it left, not at its next run.
    assert set(shared_ratios) == set(shared_tasks) and abs(sum(shared_ratios.values()) - 1) < 1e-9
    with Session(engine) as session:
        fork = session.get(Adapter, "thanks")
        assert fork is not None and fork.parent == "shared"
    finish(engine, sent[-1])
    _request(engine, "merge", "thanks")
    tick(settings, engine, sent, now=3000.0)
    rows, engine_adapters = _adapters(engine)
    assert "thanks" in rows["shared"][0] and rows["thanks"] == ([], {}, "retired")
    assert {n: r for n, r in rows.items() if r[2] == "active"} == engine_adapters
    # The gate rejects the merged version: the merge is undone onto the adapter still serving.
    jobs = len(sent)
    finish(engine, sent[-1], promote=False)
    decisions = tick(settings, engine, sent, now=4000.0)
    back = [d for d in decisions if d["action"] == "fork"]
    assert [d["task"] for d in back] == ["thanks"] and "rejected" in back[0]["reason"]
    assert len(sent) == jobs  # nothing trains
    rows, engine_adapters = _adapters(engine)
    assert rows["thanks"] == (["thanks"], {"thanks": 1.0}, "active")
    assert "thanks" not in rows["shared"][0]
    assert {n: r for n, r in rows.items() if r[2] == "active"} == engine_adapters
    with Session(engine) as session:
        _, routes = crud.routing_table(session)
    assert routes["thanks"]["adapter"] == "thanks"
