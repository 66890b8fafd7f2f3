"""A rebalance the mixture has no room for is not a training run (RatioConfig.min_move).

The case: a low-risk task of the shared adapter keeps leaking a co-task's style; once it sits
at its ratio ceiling (the anchor) and its source at its floor, every further rebalance would
retrain the adapter on the same mix.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from policies import PolicyConfig, PolicyState, TaskProfile, TaskSignals, decide, init_state, on_promotion
from policies.actions import rebalance_move, rebalance_pressure
from policies.decision import Decision
from policies.ratios import RatioConfig
from tests.policies.test_policy_engine import T0, feed, roundtrip

LOW, MED = TaskProfile("low", "positive"), TaskProfile("medium", "positive")
HIGH = TaskProfile("high", "negative")
CFG = PolicyConfig(cooldown_s=0.0)  # a round an hour: no cool-down in the way


def leaky_shared(profile: TaskProfile) -> PolicyState:
    """``l`` (``profile``) leaks 20 % of its answers in ``g``'s style (100 answers prove more
    than low risk's 10 %); ``m`` and ``g`` are fine."""
    st = init_state({"shared": ["g", "l", "m"]}, {"g": LOW, "l": profile, "m": MED}, CFG,
                    data_sizes=dict.fromkeys("glm", 1000), baselines=dict.fromkeys("glm", 0.9))
    for t in "gm":
        feed(st, t, 300, 0.95)
    feed(st, "l", 300, 0.80, source="g")
    return st


def rounds(st: PolicyState, config: PolicyConfig, n: int) -> tuple[PolicyState, list[Decision]]:
    """``n`` rounds of: decide; promote what trained; ``l`` leaks again on the new version."""
    seen: list[Decision] = []
    version = 1
    for i in range(n):
        now = T0 + 3600.0 * i
        st, ds = decide(st, {}, now=now, config=config)
        st = roundtrip(st)
        seen += ds
        if any(d.train for d in ds):
            version += 1
            st = on_promotion(st, "shared", version=version, now=now + 60, config=config)
            for t in "gm":
                feed(st, t, 100, 0.95)
            feed(st, "l", 100, 0.80, source="g")
    return st, seen


def test_a_low_risk_leak_at_its_bounds_stops_retraining() -> None:
    st, seen = rounds(leaky_shared(LOW), CFG, 8)
    rebalances = [d for d in seen if d.action == "rebalance"]
    holds = [d for d in seen if d.action == "hold" and d.signals.get("blocked_by") == "saturated"]
    # A few rebalances take l to its ceiling and g to its floor; then no more training runs.
    assert 1 <= len(rebalances) <= 4, [d.reason for d in rebalances]
    assert all(d.signals["move"] >= CFG.ratios.min_move for d in rebalances)
    assert len(holds) == 1 and "the mixture is at its bounds" in holds[0].reason  # logged once
    assert seen[-1] == holds[0]  # and after it, for the remaining rounds, nothing trains
    move, _ = rebalance_move(st, "shared", rebalance_pressure(st, "shared", ["l"], CFG)[0], CFG)
    assert move < CFG.ratios.min_move
    # Without the rule every round retrains on (nearly) the same mix.
    off = replace(CFG, ratios=replace(CFG.ratios, min_move=0.0))
    _, seen_off = rounds(leaky_shared(LOW), off, 8)
    assert [d.action for d in seen_off] == ["rebalance"] * 8


def test_new_data_still_retrains_a_saturated_adapter() -> None:
    st, _ = rounds(leaky_shared(LOW), CFG, 8)
    st, ds = decide(st, {"g": TaskSignals(new_examples=300)}, now=T0 + 10 * 3600.0, config=CFG)
    assert [(d.action, d.adapter) for d in ds if d.train] == [("retrain", "shared")]
    assert "l" in ds[-1].signals["audit"]  # the leaking task is self-audited by that retrain


@pytest.mark.parametrize("profile", [MED, HIGH], ids=["medium", "high"])
def test_a_task_that_can_be_forked_keeps_its_rebalances(profile: TaskProfile) -> None:
    """Rebalances are the way to a medium- or high-risk task's fork: never held as saturated."""
    _, seen = rounds(leaky_shared(profile), CFG, 8)
    assert not [d for d in seen if d.signals.get("blocked_by") == "saturated"]
    assert any(d.action == "fork" and d.task == "l" for d in seen)


def test_min_move_is_validated_and_round_trips() -> None:
    with pytest.raises(ValueError, match="min_move"):
        RatioConfig(min_move=1.0)
    assert PolicyConfig().ratios.min_move == 0.01
    off = PolicyConfig.from_dict(json.loads('{"ratios": {"min_move": 0}}'))
    assert off.ratios.min_move == 0.0 and off.ratios.max_drift == RatioConfig().max_drift
    assert PolicyConfig.from_dict(off.to_dict()) == off
