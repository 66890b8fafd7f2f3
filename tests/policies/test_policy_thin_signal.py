"""The engine under thin signal: it acts on evidence, not on noise, and says when it waits."""

from __future__ import annotations

import random

from daemon.sim.run import SIM_POLICY, SIM_SECONDS_PER_EVENT
from policies import PolicyConfig, TaskProfile, decide, init_state, observe, on_promotion
from policies.events import observe_unrated
from tests.policies.test_policy_engine import CFG, NEG_HIGH, POS_LOW, T0, feed, make, run

SIM = PolicyConfig.from_dict({**SIM_POLICY, "seconds_per_event": SIM_SECONDS_PER_EVENT})


def test_a_flag_too_few_to_prove_a_leak_is_held_and_said() -> None:
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 58, 1.0)
    for _ in range(2):  # 2 in 60: 3.3 % > 2 %, 2.8 % once 0.5 % false flags are discounted
        observe(st, "h", False, crosstalk_source="g", origin="auto")
    win = st.tasks["h"].window
    assert win.crosstalk_rate >= CFG.for_risk("high").crosstalk_on and not win.leaking
    st, ds = run(st, T0)
    assert [(d.action, d.signals["wanted"], d.signals["blocked_by"]) for d in ds] == [
        ("hold", "rebalance", "evidence")]
    assert "crosstalk 2/60 in h's window" in ds[0].reason
    assert "not enough evidence of a leak (lower bound 0.2% <= 2.0%)" in ds[0].reason
    st, ds = run(st, T0 + 60)
    assert ds == []  # said once
    feed(st, "h", 60, 0.8, source="g")  # 13 flags in 100 now: proven
    assert st.tasks["h"].window.leaking
    st, ds = run(st, T0 + 120)
    assert [(d.action, d.task) for d in ds] == [("rebalance", "h")]


def test_a_live_drop_on_few_ratings_is_held_then_rolled_back_on_enough() -> None:
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    st = on_promotion(st, "shared", version=1, now=T0 - 3600, config=CFG)
    feed(st, "h", 300, 0.9)
    st = on_promotion(st, "shared", version=2, now=T0, config=CFG)
    feed(st, "h", 40, 0.7)
    st, ds = run(st, T0 + 60)
    assert [(d.action, d.signals["wanted"], d.signals["blocked_by"]) for d in ds] == [
        ("hold", "rollback", "evidence")]
    assert "accepts 70.0% of h live vs 90.0% for v1" in ds[0].reason
    assert f"40 of {CFG.probation_min_events} rated answers" in ds[0].reason
    feed(st, "h", 200, 0.7)
    st, ds = run(st, T0 + 120)
    assert [(d.action, d.task) for d in ds] == [("rollback", "h")]


def _thin_noise_run(seed: int, events: int, config: PolicyConfig = SIM) -> list[str]:
    """Three tasks that never leak nor degrade, under production-like feedback: 5 % rated,
    5 % of good answers rejected and 10 % of bad ones accepted, the style detector flagging
    0.5 % of clean answers, unrated answers posted; a retrain promoted every 1,500 requests.
    Returns every non-hold decision."""
    rng = random.Random(seed)
    profiles = {"h": TaskProfile("high", "formal"), "m": TaskProfile("medium", "warm"),
                "g": TaskProfile("low", "warm")}
    st = init_state({"shared": ["g", "h", "m"]}, profiles, config,
                    data_sizes=dict.fromkeys(profiles, 1000))
    st = on_promotion(st, "shared", version=1, now=0.0, config=config)
    mix = ["g"] * 6 + ["m"] * 3 + ["h"]
    acted: list[str] = []
    version = 1
    for i in range(1, events + 1):
        task = rng.choice(mix)
        good = rng.random() < 0.9
        flag = "g" if task != "g" and rng.random() < SIM.crosstalk_false_flags else None
        if rng.random() < 0.05:
            accepted = rng.random() >= 0.05 if good else rng.random() < 0.10
            observe(st, task, accepted, crosstalk_source=flag, origin="auto")
        else:
            observe_unrated(st, task, checked=True, crosstalk_source=flag)
        if i % 50 == 0:
            st, ds = decide(st, {}, now=i * SIM_SECONDS_PER_EVENT, config=config)
            acted += [f"{d.action} {d.task}: {d.reason}" for d in ds if d.action != "hold"]
        if i % 1500 == 0:
            version += 1
            st = on_promotion(st, "shared", version=version, now=i * SIM_SECONDS_PER_EVENT,
                              config=config)
    return acted


def test_label_noise_and_false_flags_alone_decide_nothing() -> None:
    assert _thin_noise_run(seed=42, events=30_000) == []
    # The same stream read on the point estimate (z = 0) takes false flags for leaks.
    assert _thin_noise_run(seed=42, events=30_000, config=PolicyConfig.from_dict(
        {**SIM.to_dict(), "crosstalk_z": 0.0}))
