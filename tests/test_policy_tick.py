"""The policy tick against real SQL and Redis: feedback in, decisions and jobs out.

Training is stood in for here by writing what a finished job writes (a promoted version and
its routes: tests/support/policy_tick.py); tests/test_loop.py runs the real trainer. The
engine's adapters (first versions, rebuilds, overrides, the Adapter table):
tests/test_policy_tick_adapters.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from daemon.settings import Settings
from policies import PolicyConfig
from storage import crud
from storage.models import (
    Adapter,
    FeedbackEvent,
    PolicyDecision,
    PolicyStateRow,
    TrainingJob,
)
from storage.suite import load_suite
from tests.helpers import event
from tests.support.policy_tick import FAST, feed, finish, tick
from workers.policy_inputs import stored_observed


def test_bootstrap_then_quiet(settings: Settings, engine: Engine) -> None:
    sent: list[int] = []
    decisions = tick(settings, engine, sent, now=1000.0)
    assert [(d["action"], d["adapter"]) for d in decisions] == [("retrain", "shared")]
    assert len(sent) == 1
    # While the job runs nothing new starts, and the job is not re-sent yet.
    assert tick(settings, engine, sent, now=1010.0) == []
    assert len(sent) == 1
    finish(engine, sent[0])
    assert tick(settings, engine, sent, now=1020.0) == []


@pytest.mark.parametrize("clock", [None, 0.15])
def test_leaking_high_risk_task_rebalances_then_forks(settings: Settings, engine: Engine,
                                                      clock: float | None) -> None:
    # On an event clock (a synchronous simulation) no event arrives while a job trains: the
    # job's outcome must still count as later than the rebalance that started it.
    config = PolicyConfig.from_dict({**FAST.to_dict(), "seconds_per_event": clock})

    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, config=config)
    finish(engine, sent[0])
    healthy = [event(f"h{i}", t) for i, t in enumerate(["greeting", "apology", "thanks"] * 200)]
    feed(settings, engine, healthy)
    retrain = tick(settings, engine, sent, now=2000.0, config=config)
    assert [d["action"] for d in retrain] == ["retrain"]  # 600 new examples >= 50
    finish(engine, sent[-1])
    # Holiday: apologies start wishing a happy new year.
    leak = [event(f"l{i}", "apology", "reject", crosstalk_source="greeting") for i in range(300)]
    feed(settings, engine, leak)
    decisions = tick(settings, engine, sent, now=3000.0, config=config)
    actions = [(d["action"], d["task"]) for d in decisions]
    assert ("rebalance", "apology") in actions, [d["reason"] for d in decisions]
    rebalance = next(d for d in decisions if d["action"] == "rebalance")
    assert rebalance["reason"] and rebalance["signals"]
    with Session(engine) as session:
        shared = session.get(Adapter, "shared")
        assert shared is not None and shared.ratios["apology"] > 0
        job = session.get(TrainingJob, sent[-1])
        assert job is not None and job.kind == "rebalance" and job.params["ratios"] == shared.ratios
    finish(engine, sent[-1])
    tick(settings, engine, sent, now=4000.0, config=config)
    # Still leaking after the rebalance: a high-risk task is forked into its own adapter.
    feed(settings, engine, [event(f"m{i}", "apology", "reject", crosstalk_source="greeting")
                            for i in range(300)])
    decisions = tick(settings, engine, sent, now=5000.0, config=config)
    forks = [d for d in decisions if d["action"] == "fork"]
    assert forks and forks[0]["task"] == "apology", [(d["action"], d["task"]) for d in decisions]
    with Session(engine) as session:
        fork_adapter = session.get(Adapter, forks[0]["adapter"])
        assert fork_adapter is not None and fork_adapter.tasks == ["apology"]
        shared = session.get(Adapter, "shared")
        assert shared is not None and "apology" not in shared.tasks
        job = session.get(TrainingJob, sent[-1])
        assert job is not None and job.kind == "fork" and job.adapter == fork_adapter.name
        # Every event was observed exactly once and every decision is on record.
        assert not session.execute(select(FeedbackEvent).where(
            FeedbackEvent.observed == False)).first()  # noqa: E712
        rows = session.execute(select(PolicyDecision)).scalars().all()
        assert {"retrain", "rebalance", "fork"} <= {r.action for r in rows}
    finish(engine, sent[-1])
    with Session(engine) as session:
        _, routes = crud.routing_table(session)
    assert routes["apology"]["adapter"] == forks[0]["adapter"]
    assert routes["greeting"]["adapter"] == "shared"


def test_measured_affinity_reaches_the_engine(settings: Settings, engine: Engine) -> None:
    # One training run measures that a step on greeting makes apology's loss worse (TAG
    # lookahead) beyond the high-risk limit: the next tick forks apology for it.
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    hurt = {"train": {"affinity": {"greeting": {"greeting": 0.1, "apology": -0.08},
                                   "apology": {"greeting": 0.01}}}}
    finish(engine, sent[0], eval_result=hurt)
    feed(settings, engine, [event(f"h{i}", t) for i, t in enumerate(["greeting", "apology"] * 40)])
    decisions = tick(settings, engine, sent, now=2000.0)
    forks = [d for d in decisions if d["action"] == "fork"]
    assert [d["task"] for d in forks] == ["apology"], [d["reason"] for d in decisions]
    assert "negative transfer greeting->apology = -0.08" in forks[0]["reason"]
    with Session(engine) as session:
        row = session.get(PolicyStateRow, 1)
        assert row is not None and ["greeting", "apology", -0.08] in row.state["meta"]["affinity"]
    # The adapter apology left keeps measuring it: its next run probes apology, trains without
    # (an operator's `adaptd train` job reads the same list from the stored state).
    with Session(engine) as session:
        assert stored_observed(session, "shared") == ["apology"]
        assert stored_observed(session, forks[0]["adapter"]) == []
    for job_id in sent[1:]:
        finish(engine, job_id)
    feed(settings, engine, [event(f"n{i}", "greeting") for i in range(60)])
    retrains = [d for d in tick(settings, engine, sent, now=3000.0) if d["adapter"] == "shared"]
    assert [d["action"] for d in retrains] == ["retrain"], retrains
    with Session(engine) as session:
        job = session.get(TrainingJob, sent[-1])
        assert job is not None and job.adapter == "shared"
        assert job.params["observe"] == ["apology"] and "apology" not in job.params["tasks"]


@pytest.mark.parametrize("margin", [2.0, None], ids=["auto-detector", "user-flags-only"])
def test_leaks_nobody_flagged_are_caught_by_the_style_detector(
        settings: Settings, engine: Engine, margin: float | None) -> None:
    # Users accept apologies that wish a happy new year and flag nothing. The automatic style
    # detector (the default) still sees greeting's style in them: crosstalk of origin auto,
    # counted for Prometheus, and the high-risk task is rebalanced. With user flags only the
    # same traffic looks healthy.
    config = PolicyConfig.from_dict({**FAST.to_dict(), "auto_crosstalk_margin": margin})
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, config=config)
    finish(engine, sent[0])
    healthy = [event(f"h{i}", t) for i, t in enumerate(["greeting", "apology", "thanks"] * 20)]
    cheerful = [event(f"c{i}", "apology", output="王总，新年好！非常抱歉~") for i in range(60)]
    feed(settings, engine, healthy + cheerful)
    decisions = tick(settings, engine, sent, now=2000.0, config=config)
    with Session(engine) as session:
        counted = {(labels["task"], labels["source_task"], labels["origin"]): value
                   for name, labels, value in crud.read_counters(session)
                   if name == "adaptd_crosstalk_events_total"}
    actions = [(d["action"], d["task"]) for d in decisions]
    if margin is None:
        assert counted == {} and ("rebalance", "apology") not in actions, actions
        return
    # Only the 60 cheerful apologies; the 60 healthy outputs in their own style are not flagged.
    assert counted == {("apology", "greeting", "auto"): 60.0}
    assert ("rebalance", "apology") in actions, [d["reason"] for d in decisions]
    rebalance = next(d for d in decisions if d["action"] == "rebalance")
    assert "apology leaking" in rebalance["reason"] and "from greeting" in rebalance["reason"]


def test_static_mode_retrains_on_schedule_and_never_forks(settings: Settings,
                                                          engine: Engine) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, mode="static")
    finish(engine, sent[0])
    feed(settings, engine, [event(f"g{i}", "greeting") for i in range(40)]
         + [event(f"l{i}", "apology", "reject", crosstalk_source="greeting") for i in range(300)])
    decisions = tick(settings, engine, sent, now=2000.0, mode="static")
    assert [d["action"] for d in decisions] == ["retrain"]
    ratios = decisions[0]["signals"]["ratios"]
    suite = load_suite(settings.suite)
    assert abs(sum(ratios.values()) - 1) < 1e-9
    # Data-proportional: greeting has its seed data plus 40 accepted outputs.
    assert ratios["greeting"] > ratios["apology"]
    assert len(ratios) == len(suite.tasks)


def _eval_side(tasks: list[str], scores: dict[str, list[float]]) -> dict[str, Any]:
    """One side of a version's eval record: per task the quality and per-answer scores."""
    same = [1.0] * 90 + [0.0] * 10
    return {"tasks": {t: {"quality": sum(s) / len(s), "scores": s}
                      for t in tasks for s in [scores.get(t, same)]}}


@pytest.mark.parametrize("paired", [False, True], ids=["noise", "significant"])
def test_retrain_regressions_count_only_beyond_eval_noise(settings: Settings, engine: Engine,
                                                          paired: bool) -> None:
    """Two retrains each drop thanks (medium risk: forked after 2 regressions) by 5 points on
    100 eval answers. Drawn independently the drop is within the paired noise and nothing
    forks; on the same answers (5 turned bad, the rest unchanged) it is real: thanks forks."""
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    finish(engine, sent[0])
    tasks = sorted(load_suite(settings.suite).tasks)
    before = [1.0] * 90 + [0.0] * 10
    if paired:
        after = [0.0] * 5 + [1.0] * 85 + [0.0] * 10  # the same answers, 5 of them worse
    else:
        # 85 % too, but 10 answers worse and 5 better: paired se 0.039, 0.05 < 1.64 x se
        after = [1.0, 0.0] * 5 + [1.0] * 75 + [0.0] * 10 + [1.0] * 5
    assert len(after) == 100 and sum(after) == 85
    evaluation = {"production": _eval_side(tasks, {"thanks": before}),
                  "candidate": _eval_side(tasks, {"thanks": after})}
    forks: list[dict[str, Any]] = []
    for round_ in range(3):
        feed(settings, engine, [event(f"r{round_}-{i}", t)
                                for i, t in enumerate(["greeting", "apology"] * 40)])
        decisions = tick(settings, engine, sent, now=2000.0 + 1000 * round_)
        forks += [d for d in decisions if d["action"] == "fork"]
        if not forks:
            assert [d["action"] for d in decisions] == ["retrain"], decisions
            finish(engine, sent[-1], eval_result=evaluation)
    with Session(engine) as session:
        row = session.get(PolicyStateRow, 1)
        assert row is not None
        regressions = row.state["engine"]["tasks"]["thanks"]["regressions"]
    if paired:
        assert [d["task"] for d in forks] == ["thanks"], forks
        assert "regressed in 2 consecutive retrains" in forks[0]["reason"]
    else:
        assert forks == [] and regressions == 0


def test_the_tick_tallies_high_risk_tasks_only(settings: Settings, engine: Engine) -> None:
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0)
    finish(engine, sent[0])
    feed(settings, engine, [event(f"x{i}", "greeting") for i in range(30)]
         + [event(f"y{i}", "apology") for i in range(7)])
    tick(settings, engine, sent, now=2000.0)
    with Session(engine) as session:
        row = session.get(PolicyStateRow, 1)
        assert row is not None
        greeting = row.state["engine"]["tasks"]["greeting"]
        apology = row.state["engine"]["tasks"]["apology"]
    def n(window: dict[str, Any]) -> int:
        return sum(b["n"] for b in window["buckets"])

    assert n(greeting["window"]) == 30 and n(greeting["mixture"]) == 0
    # policies.mixture.rebalanced_leak reads a high-risk task's tally.
    assert n(apology["window"]) == n(apology["mixture"]) == 7


@pytest.mark.parametrize("clock", ["wall", "events"])
def test_an_event_clock_measures_the_engines_times_in_events(settings: Settings, engine: Engine,
                                                            clock: str) -> None:
    """With ``seconds_per_event`` the cooldown after a promotion lasts so many *events*, however
    much wall time passes (a synchronous simulation on a slow machine); without, wall time."""
    config = PolicyConfig.from_dict({
        **FAST.to_dict(), "cooldown_s": 300,
        "seconds_per_event": 1.0 if clock == "events" else None})
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, config=config)  # bootstrap
    finish(engine, sent[0])
    with Session(engine) as session:
        assert crud.count_unaccounted_jobs(session) == 1
    assert tick(settings, engine, sent, now=1010.0, config=config) == []  # promotion accounted
    with Session(engine) as session:
        assert crud.count_unaccounted_jobs(session) == 0
    feed(settings, engine, [event(f"a{i}", "greeting") for i in range(100)])
    # A day of wall time but only 100 events: still cooling down on the event clock.
    first = tick(settings, engine, sent, now=1010.0 + 86400, config=config)
    feed(settings, engine, [event(f"b{i}", "greeting") for i in range(250)])
    second = tick(settings, engine, sent, now=1011.0 + 86400, config=config)
    trains = [[d["action"] for d in ds if d["action"] != "hold"] for ds in (first, second)]
    assert trains == ([[], ["retrain"]] if clock == "events" else [["retrain"], []])
    if clock == "events":  # 300 s of cool-down less 100 events of 1 s
        assert "cool-down of shared for another 200s" in first[0]["reason"]
    with Session(engine) as session:
        decision = session.execute(select(PolicyDecision).order_by(
            col(PolicyDecision.id).desc())).scalars().first()
    assert decision is not None and decision.at == 1011.0 + 86400  # rows keep wall time
