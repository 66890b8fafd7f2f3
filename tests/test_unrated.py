"""Unrated answers through the drain and the policy tick (real Redis and SQL).

An answer the app served and nobody rated is crosstalk evidence for the automatic style
detector and a served answer in the task's window; it is never a verdict and never data.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from daemon.settings import Settings
from policies import PolicyConfig
from storage import crud
from storage.models import PolicyStateRow, TrainingExample
from tests.helpers import event
from tests.support.policy_tick import FAST, feed, finish, tick

CHEERFUL_APOLOGY = "王总，新年好！非常抱歉~"


def _auto_counts(engine: Engine) -> dict[tuple[str, str, str], float]:
    with Session(engine) as session:
        return {(labels["task"], labels["source_task"], labels["origin"]): value
                for name, labels, value in crud.read_counters(session)
                if name == "adaptd_crosstalk_events_total"}


def _apology_state(engine: Engine) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.get(PolicyStateRow, 1)
        assert row is not None
        return dict(row.state["engine"]["tasks"]["apology"])


@pytest.mark.parametrize("margin", [2.0, None], ids=["auto-detector", "no-detector"])
def test_a_leak_seen_only_in_unrated_answers_reaches_the_window_not_the_data(
        settings: Settings, engine: Engine, margin: float | None) -> None:
    # Every rated answer is healthy; the greeting style shows only in apologies nobody rated.
    config = PolicyConfig.from_dict({**FAST.to_dict(), "auto_crosstalk_margin": margin})
    sent: list[int] = []
    tick(settings, engine, sent, now=1000.0, config=config)
    finish(engine, sent[0])
    with Session(engine) as session:
        examples_before = session.exec(select(func.count()).select_from(TrainingExample)).one()
    rated = [event(f"r{i}", t) for i, t in enumerate(["greeting", "apology", "thanks"] * 10)]
    unrated = [event(f"u{i}", "apology", verdict="unrated", output=CHEERFUL_APOLOGY)
               for i in range(60)]
    feed(settings, engine, rated + unrated)
    decisions = tick(settings, engine, sent, now=2000.0, config=config)
    # Unrated answers never become training examples: only the 30 rated accepts do.
    with Session(engine) as session:
        examples = session.exec(select(func.count()).select_from(TrainingExample)).one()
    assert examples - examples_before == 30
    state = _apology_state(engine)
    buckets = state["window"]["buckets"]
    n = sum(b["n"] for b in buckets)
    unrated_n = sum(b["un"] for b in buckets)
    accepted = sum(b["acc"] for b in buckets)
    actions = [(d["action"], d["task"]) for d in decisions]
    if margin is None:
        # Nobody checked them: the window holds the 10 rated apologies alone, no crosstalk.
        assert (n, unrated_n, accepted) == (10, 0, 10)
        assert _auto_counts(engine) == {}
        assert ("rebalance", "apology") not in actions, actions
        return
    # Checked by the detector: 70 answers in the window, acceptance still over the 10 rated.
    assert (n, unrated_n, accepted) == (70, 60, 10)
    flagged = [(s, c) for b in buckets for s, c in b["xt"].items()]
    assert {s for s, _ in flagged} == {"greeting"}
    assert sum(c[0] for _, c in flagged) == 0 and sum(c[1] for _, c in flagged) == 60
    assert _auto_counts(engine) == {("apology", "greeting", "auto"): 60.0}
    # The degradation detector saw only the rated answers (all accepted): no alarm from silence.
    det = state["detector"]
    assert det["n"] + det["warm_n"] == 10 and not det["degraded"]
    assert ("rebalance", "apology") in actions, [d["reason"] for d in decisions]
    rebalance = next(d for d in decisions if d["action"] == "rebalance")
    assert "apology leaking" in rebalance["reason"] and "from greeting" in rebalance["reason"]
