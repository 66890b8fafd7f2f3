"""A rebalanced high-risk task's leak, seen across every version served since its rebalance."""

from __future__ import annotations

import json

import pytest

from policies import PolicyConfig, PolicyState, on_promotion, override
from policies.mixture import rebalanced_leak
from tests.policies.test_policy_engine import (
    CFG,
    HOUR,
    NEG_HIGH,
    POS_LOW,
    POS_MED,
    T0,
    acts,
    feed,
    make,
    run,
)


def rebalanced() -> PolicyState:
    """``h`` (high risk) leaks g's style; the engine rebalances the shared adapter for it."""
    st = make({"shared": ["c", "g", "h"]}, {"c": POS_MED, "g": POS_LOW, "h": NEG_HIGH})
    st = on_promotion(st, "shared", version=1, now=T0 - 4 * HOUR, config=CFG)
    feed(st, "h", 60, 0.8, source="g")
    st, ds = run(st, T0)
    assert acts(ds) == [("rebalance", "h", "applied")]
    assert st.tasks["h"].rebalanced_ratio == st.adapters["shared"].ratios.version
    return st


def promoted_often(st: PolicyState, *, versions: int, rate: float, source: str = "g",
                   other_rebalance_at: int | None = 2) -> PolicyState:
    """``versions`` promotions after the rebalance, 12 events of ``h`` each (a rare task in a
    busy adapter), and at ``other_rebalance_at`` another task's rebalance: new ratios."""
    now = T0
    for k in range(versions):
        now += HOUR
        st = on_promotion(st, "shared", version=k + 2, now=now, config=CFG)
        feed(st, "h", 12, rate, source=source)
        if k == other_rebalance_at:
            st, _ = override(st, "c", "rebalance", now=now, config=CFG)
    return st


def test_a_leak_each_version_is_too_short_to_show_forks_after_the_rebalance() -> None:
    st = promoted_often(rebalanced(), versions=6, rate=0.75)
    h = st.tasks["h"]
    assert h.window.n == 12 < CFG.crosstalk_min_events and not h.window.leaking
    assert h.mixture.n == 72  # six versions, across c's rebalance (new ratios)
    assert st.adapters["shared"].ratios.version > h.rebalanced_ratio  # type: ignore[operator]
    st, ds = run(st, T0 + 10 * HOUR)
    assert acts(ds) == [("fork", "h", "applied")]
    assert ds[0].reason == ("high-risk task still leaking 25.0% crosstalk from co-tasks (g most) "
                            "over 72 events since its rebalance of shared")
    assert st.tasks["h"].adapter != "shared" and st.tasks["h"].rebalanced_ratio is None


def test_only_high_risk_tasks_keep_a_tally() -> None:
    st = promoted_often(rebalanced(), versions=4, rate=0.75, other_rebalance_at=None)
    feed(st, "c", 30, 0.9, source="g")
    st, _ = override(st, "c", "rebalance", now=T0 + 5 * HOUR, config=CFG)
    st = on_promotion(st, "shared", version=9, now=T0 + 6 * HOUR, config=CFG)
    assert st.tasks["c"].mixture.n == 0  # not high risk: its live window alone decides
    assert st.tasks["h"].mixture.n == 48  # high risk, rebalanced: still counting


def test_no_fork_without_enough_evidence_or_once_the_rebalance_worked() -> None:
    few = promoted_often(rebalanced(), versions=3, rate=0.75)  # 36 events < 50
    assert rebalanced_leak(few, "h", CFG) is None
    assert acts(run(few, T0 + 10 * HOUR)[1]) == []
    clean = promoted_often(rebalanced(), versions=10, rate=1.0)
    feed(clean, "h", 1, 0.0, source="g")  # 1 leak in 121: not proven above the 1 % switch-off
    assert clean.tasks["h"].mixture.n == 121 and rebalanced_leak(clean, "h", CFG) is None
    assert acts(run(clean, T0 + 20 * HOUR)[1]) == []


def test_a_leak_from_a_task_that_left_the_adapter_is_not_a_reason_to_fork() -> None:
    st = make({"shared": ["c", "g", "h"], "x": ["x"]},
              {"c": POS_MED, "g": POS_LOW, "h": NEG_HIGH, "x": POS_LOW})
    st = on_promotion(st, "shared", version=1, now=T0 - 4 * HOUR, config=CFG)
    feed(st, "h", 60, 0.8, source="g")
    st, _ = run(st, T0)
    st = promoted_often(st, versions=6, rate=0.75, source="x")
    assert rebalanced_leak(st, "h", CFG) is None
    assert acts(run(st, T0 + 10 * HOUR)[1]) == []


def test_a_second_rebalance_restarts_the_count() -> None:
    st = promoted_often(rebalanced(), versions=3, rate=0.75, other_rebalance_at=None)
    assert st.tasks["h"].mixture.n == 36
    st, _ = override(st, "h", "rebalance", now=T0 + 5 * HOUR, config=CFG)
    assert st.tasks["h"].rebalanced_ratio == st.adapters["shared"].ratios.version
    st = on_promotion(st, "shared", version=9, now=T0 + 6 * HOUR, config=CFG)
    assert st.tasks["h"].mixture.n == 0


def test_states_stored_before_the_field_still_load() -> None:
    data = json.loads(json.dumps(rebalanced().to_dict()))
    for t in data["tasks"].values():
        del t["rebalanced_ratio"]
    st = PolicyState.from_dict(data)
    assert st.tasks["h"].rebalanced_ratio is None
    st = promoted_often(st, versions=6, rate=0.75)
    assert rebalanced_leak(st, "h", CFG) is None  # counted per ratios, as before


def test_the_tally_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="mixture_window"):
        PolicyConfig.from_dict({"mixture_window": 2})
    with pytest.raises(ValueError, match="unknown policy config keys"):
        PolicyConfig.from_dict({"mixture_leak_rate": 0.02})
