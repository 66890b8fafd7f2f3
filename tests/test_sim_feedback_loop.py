"""The app simulator's feedback model against the real API, drain and policy tick.

Generation is the model server's edge: a scripted generator answers every request with one
of the task's own seed responses, so every answer is good and whatever the engine sees
besides is the users' noise. Training is stood in for as in tests/support/policy_tick.py
(tests/test_loop.py runs the real trainer).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from daemon.settings import Settings
from daemon.sim.app import AppSimulator, Tally
from daemon.sim.feedback import FeedbackSpec
from daemon.sim.run import SIM_POLICY, SIM_SECONDS_PER_EVENT
from daemon.sim.scenario import load_scenario
from policies import PolicyConfig
from storage import crud
from storage.models import FeedbackEvent, PolicyStateRow, TrainingExample
from storage.suite import Suite, load_suite
from tests.conftest import LiveServer
from tests.helpers import SECRET
from tests.support.policy_tick import finish, tick
from workers.ingest import drain_once

STRUCTURAL = {"fork", "merge", "rebalance", "rollback"}


class SeedAnswers:
    """Answers with one of the task's seed responses, drawn with the request's sampling seed."""

    def __init__(self, suite: Suite):
        self.pool = {t: [e.response for e in suite.seed_examples(t, seed=0)] for t in suite.tasks}

    def generate(self, task: str, prompts: Sequence[str], *, adapter: str | None = None,
                 version: int | None = None, path: Path | None = None,
                 sha256: str | None = None, **kwargs: Any) -> list[str]:
        rng = random.Random(kwargs["seed"])
        return [rng.choice(self.pool[task]) for _ in prompts]


def drain(settings: Settings, engine: Engine) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    while drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="t").read:
        pass


def test_late_and_reordered_ratings_land_once_and_unrated_answers_train_nothing(
        live_api: LiveServer, settings: Settings, engine: Engine) -> None:
    suite = load_suite("builtin:festive-zh")
    spec = FeedbackSpec(rated=0.3, false_reject=0.1, false_accept=0.2, names_source=0.5,
                        delay=60, post_unrated=True)
    traffic = {t: 1.0 for t in suite.tasks}
    posted: list[dict[str, Any]] = []
    rated: dict[str, Tally] = {}
    truth: dict[str, Tally] = {}
    with httpx.Client(timeout=30) as http:
        app = AppSimulator(suite=suite, url=live_api.url, secret=SECRET, generator=SeedAnswers(suite),
                           seed=9, http=http, feedback=spec)
        for _ in range(6):
            posted += app.step(traffic, 50, rated, truth)
            drain(settings, engine)
        pending = len(app.pending)
        posted += app.flush()
    drain(settings, engine)
    assert pending > 0  # some ratings were still on their way when the traffic stopped
    ids = [e["id"] for e in posted]
    assert len(ids) == len(set(ids)) == 300  # every answer posted once: rated or unrated
    answer = [int(i.rsplit("_", 1)[1]) for i in ids]
    rated_order = [a for a, e in zip(answer, posted, strict=True) if e["verdict"] != "unrated"]
    assert rated_order != sorted(rated_order)  # ratings landed out of order
    n_rated = sum(t.events for t in rated.values())
    assert n_rated == len(rated_order) and sum(t.events for t in truth.values()) == 300
    with Session(engine) as session:
        stored = {e.id: e.verdict for e in session.exec(select(FeedbackEvent))}
        examples = list(session.exec(select(TrainingExample)
                                     .where(col(TrainingExample.event_id).is_not(None))))
        counted: dict[str, float] = {}
        for name, labels, value in crud.read_counters(session):
            if name == "adaptd_feedback_events_total":
                counted[labels["verdict"]] = counted.get(labels["verdict"], 0.0) + value
    assert stored == {e["id"]: e["verdict"] for e in posted}
    assert sum(counted.values()) == 300 and counted["unrated"] == 300 - n_rated
    # Unrated answers never become training examples; every rating yields exactly one.
    unrated = {i for i, v in stored.items() if v == "unrated"}
    assert unrated and not unrated & {x.event_id for x in examples}
    assert len(examples) == n_rated
    # The noise is there: good answers rejected, some crosstalk-free rejects.
    assert all(t.accepted == t.events for t in truth.values())
    assert sum(t.accepted for t in rated.values()) < n_rated


def test_noise_alone_makes_no_structural_decision(live_api: LiveServer, settings: Settings,
                                                  engine: Engine, tmp_path: Path) -> None:
    # Stable traffic over compatible tasks (the suite's four cheerful ones), every answer in
    # its task's own style; users rate 5 % of them with 5 %/10 % label noise, name a leak's
    # source one time in five, rate up to 200 requests late; the app posts the rest unrated.
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 21, "suite": "builtin:festive-zh",
        "feedback": {"rated": 0.05, "false_reject": 0.05, "false_accept": 0.10,
                     "names_source": 0.2, "delay": 200, "post_unrated": True},
        "phases": [{"name": "stable", "events": 4000,
                    "traffic": {"greeting": 0.25, "festival_wish": 0.25, "thanks": 0.25,
                                "praise": 0.25}}]}), "utf-8")
    scenario, suite, _ = load_scenario(path)
    config = PolicyConfig.from_dict({**SIM_POLICY, "seconds_per_event": SIM_SECONDS_PER_EVENT})
    sent: list[int] = []
    decisions = tick(settings, engine, sent, now=1000.0, config=config)
    finish(engine, sent[0])
    rated: dict[str, Tally] = {}
    truth: dict[str, Tally] = {}
    with httpx.Client(timeout=30) as http:
        app = AppSimulator(suite=suite, url=live_api.url, secret=SECRET,
                           generator=SeedAnswers(suite), seed=scenario.seed, http=http,
                           feedback=scenario.feedback)

        def settle() -> None:
            drain(settings, engine)
            finished = len(sent)
            decisions.extend(tick(settings, engine, sent, now=2000.0, config=config))
            for job in sent[finished:]:
                finish(engine, job)

        for phase in scenario.phases:
            for _ in range(phase.events // 50):
                app.step(phase.traffic, 50, rated, truth)
                settle()
        app.flush()
        settle()
    structural = [(d["action"], d["task"], d["reason"]) for d in decisions
                  if d["action"] in STRUCTURAL]
    assert structural == []
    # The run carried the noise it is meant to: ~5 % rated, some of it wrong, and the engine
    # saw the unrated answers through its style detector.
    n_rated = sum(t.events for t in rated.values())
    assert 140 <= n_rated <= 260, n_rated
    assert sum(t.accepted for t in rated.values()) < n_rated
    with Session(engine) as session:
        row = session.get(PolicyStateRow, 1)
        assert row is not None
        windows = {t: s["window"] for t, s in row.state["engine"]["tasks"].items()}
    seen = sum(b["un"] for w in windows.values() for b in w["buckets"])
    assert seen > 100
