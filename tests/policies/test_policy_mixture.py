"""The mixture tally: a shared task's leak seen across promotions on the same ratios."""

from __future__ import annotations

import json

import pytest

from policies import PolicyConfig, PolicyState, on_promotion, override
from policies.mixture import mixture_leak
from tests.policies.test_policy_engine import (
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

ON = PolicyConfig(mixture_leak_rate=0.02)


def promoted_often(source: str = "g", task: str = "a", batches: int = 10) -> PolicyState:
    """``task`` leaks ~5 % of ``source``'s style, but each version serves only 30 of its
    events: the live window never reaches ``crosstalk_min_events``."""
    st = make(
        {"shared": ["a", "c", "g"], "h": ["h"]}, {"a": POS_LOW, "c": POS_MED, "g": POS_LOW, "h": NEG_HIGH}
    )
    st = on_promotion(st, "shared", version=1, now=T0 - 2 * HOUR, config=ON)  # the tally starts
    for k in range(batches):
        feed(st, task, 30, 0.95, source=source)
        feed(st, "g", 30, 0.95)
        st = on_promotion(st, "shared", version=k + 2, now=T0 - 2 * HOUR, config=ON)
    feed(st, task, 30, 0.95, source=source)
    return st


def test_the_live_window_alone_cannot_see_the_leak() -> None:
    st = promoted_often()
    a = st.tasks["a"]
    assert a.window.n == 30 < ON.crosstalk_min_events and not a.window.leaking
    assert a.mixture.n == 330  # 11 batches across 10 promotions on the same ratios
    assert a.mixture.source_counts() == {"g": {"user": 0, "auto": 22}}  # 2 in every 30
    _, ds = run(st, T0)  # default config: the tally is kept but not acted on
    assert acts(ds) == []


def test_a_slow_leak_from_a_co_task_rebalances_towards_the_task() -> None:
    st = promoted_often()
    before = dict(st.adapters["shared"].ratios.weights)
    st, ds = run(st, T0, config=ON)
    assert acts(ds) == [("rebalance", "a", "applied")]
    after = ds[0].ratios or {}
    assert after["a"] > before["a"] and after["g"] < before["g"]
    assert "from co-tasks (g most) over 330 events of the current mixture" in ds[0].reason
    assert ds[0].signals["tasks"]["a"]["mixture_events"] == 330
    # Not trouble the live window saw: it does not count towards a fork.
    assert st.tasks["a"].rebalances == 0 and st.tasks["a"].last_rebalance_at is None


def test_the_tally_restarts_only_when_other_ratios_serve() -> None:
    st, _ = run(promoted_often(), T0, config=ON)  # rebalance: ratios version 2 is training
    assert st.tasks["a"].mixture.n == 330  # the old ratios still serve
    st = on_promotion(st, "shared", version=12, now=T0 + HOUR, config=ON)
    assert st.tasks["a"].mixture.n == 0  # a version trained on the new ratios serves
    feed(st, "a", 40, 1.0)
    st = on_promotion(st, "shared", version=13, now=T0 + 3 * HOUR, config=ON)
    assert st.tasks["a"].mixture.n == 40  # a plain retrain on the same ratios


def test_no_mixture_rebalance_for_sources_gone_or_high_risk_tasks() -> None:
    # The style of a task in another adapter: a rebalance cannot remove it.
    st = promoted_often(source="h")
    assert mixture_leak(st, "a", ON) is None
    assert acts(run(st, T0, config=ON)[1]) == []
    # A high-risk task keeps its own tight window and fork rule.
    st = make({"shared": ["g", "h"]}, {"g": POS_LOW, "h": NEG_HIGH})
    for k in range(11):
        st = on_promotion(st, "shared", version=k + 1, now=T0 - 2 * HOUR, config=ON)
        feed(st, "h", 30, 0.95, source="g")
    assert st.tasks["h"].mixture.n == 330 and mixture_leak(st, "h", ON) is None


def test_states_stored_before_the_tally_still_load() -> None:
    data = json.loads(json.dumps(promoted_often().to_dict()))
    for t in data["tasks"].values():
        del t["mixture"], t["mixture_of"]
    st = PolicyState.from_dict(data)
    assert st.tasks["a"].mixture.n == 0 and st.tasks["a"].mixture_of is None
    assert acts(run(st, T0, config=ON)[1]) == []


@pytest.mark.parametrize(
    "values", [{"mixture_leak_rate": 0.0}, {"mixture_leak_rate": 1.5}, {"mixture_window": 2}]
)
def test_mixture_settings_are_checked(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="mixture_"):
        PolicyConfig.from_dict(values)


def test_other_rebalances_still_count_towards_a_fork() -> None:
    # The tally must not change what counted before it: an operator's rebalance of a
    # healthy task and a rebalance for a leak the live window sees.
    st, _ = override(promoted_often(), "a", "rebalance", now=T0, config=PolicyConfig())
    assert st.tasks["a"].rebalances == 1 and st.tasks["a"].last_rebalance_at == T0
    st = promoted_off_window()
    st, ds = run(st, T0, config=ON)
    assert acts(ds) == [("rebalance", "a", "applied")] and st.tasks["a"].rebalances == 1
    assert ds[0].reason == "a leaking 14.3% crosstalk from g"  # the live window's wording


def promoted_off_window() -> PolicyState:
    st = promoted_often()
    feed(st, "a", 40, 0.8, source="g")  # now the live window sees it too (10 of 70 events)
    assert st.tasks["a"].window.leaking
    return st


def test_the_tally_is_left_alone_when_the_rule_is_off() -> None:
    """``observe(mixture=False)`` (what the tick passes while ``mixture_leak_rate`` is None):
    the window and detector count the event, the unread tally does not."""
    from policies import observe

    st = make({"shared": ["a", "g"]}, {"a": POS_LOW, "g": POS_LOW})
    for i in range(40):
        observe(st, "a", i % 4 != 0, crosstalk_source="g" if i % 4 == 0 else None,
                mixture=False)
    a = st.tasks["a"]
    assert a.window.n == 40 and a.window.crosstalk_rate == pytest.approx(0.25)
    assert a.mixture.n == 0
    observe(st, "a", True)
    assert a.mixture.n == 1  # the default counts it, as before
