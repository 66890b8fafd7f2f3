"""The engine after a gate verdict: a rejected version waits for new data (unless a fork
changes the adapter's mixture), a rejected rebalance leads to a fork (unless the leak's
source has already left the adapter or is a compatible co-task), a task alone in its
adapter is retrained."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies import (
    Decision,
    PolicyConfig,
    PolicyState,
    TaskProfile,
    TaskSignals,
    clear_pending,
    on_promotion,
    on_rejection,
)
from tests.policies.test_policy_engine import CFG, NEG_HIGH, POS_LOW, POS_MED, T0, acts, feed, make, run


def test_rejected_version_waits_for_new_data_instead_of_looping() -> None:
    cfg = replace(CFG, cooldown_s=0)  # only the rejection holds the adapter back
    low = TaskProfile("low", "negative")  # low risk: never forked, so it would loop
    st = make({"shared": ["h", "g"]}, {"h": low, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.7, source="g")  # a leak that keeps asking for a rebalance
    st, ds = run(st, T0, config=cfg)
    assert acts(ds) == [("rebalance", "h", "applied")]
    # the gate rejects the rebalanced version: same data, no new try
    st = on_rejection(st, "shared", now=T0 + 30, config=cfg)
    sizes = {"h": 1000, "g": 1000}
    st, ds = run(st, T0 + 60, signals={t: TaskSignals(data_size=n) for t, n in sizes.items()},
                 config=cfg)
    assert [d.signals["blocked_by"] for d in ds] == ["rejected"]
    assert f"with {CFG.min_new_examples} more examples" in ds[0].reason
    # still blocked (and not re-announced) with a few more examples ...
    few = {"h": TaskSignals(data_size=1000 + CFG.min_new_examples // 2), "g": TaskSignals(data_size=1000)}
    st, ds = run(st, T0 + 120, signals=few, config=cfg)
    assert ds == []
    # ... and free again once min_new_examples arrived
    enough = {"h": TaskSignals(data_size=1000 + CFG.min_new_examples), "g": TaskSignals(data_size=1000)}
    st, ds = run(st, T0 + 180, signals=enough, config=cfg)
    assert acts(ds) == [("rebalance", "h", "applied")]
    # a failed job (not a verdict on the data) does not move the bar
    failed = clear_pending(st, "shared")
    assert failed.adapters["shared"].retry_at_data == st.adapters["shared"].retry_at_data
    # and a promotion clears the hold
    st = on_rejection(st, "shared", now=T0 + 200, config=cfg)
    assert st.adapters["shared"].retry_at_data is not None
    st = on_promotion(st, "shared", version=3, now=T0 + 240, config=cfg)
    assert st.adapters["shared"].retry_at_data is None


def _rebalance_rejected_then_forked(
    st: PolicyState, task: str, cfg: PolicyConfig
) -> tuple[PolicyState, Decision]:
    """``task``'s rebalance of ``shared`` is decided at T0 and rejected; then it is forked."""
    st, ds = run(st, T0, config=cfg)
    assert acts(ds) == [("rebalance", task, "applied")]
    st = on_rejection(st, "shared", now=T0 + 30, config=cfg)
    st, ds = run(st, T0 + 60, config=cfg)
    assert acts(ds) == [("fork", task, "applied")]
    return st, ds[0]


def test_rejected_rebalance_of_a_high_risk_task_leads_to_its_fork() -> None:
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)  # patience never runs out
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.95, source="g")
    _, fork = _rebalance_rejected_then_forked(st, "h", cfg)
    assert "still leaking 5.0% crosstalk from g after 1 rebalance" in fork.reason


def test_leak_in_a_single_task_adapter_retrains_that_adapter() -> None:
    cfg = replace(CFG, cooldown_s=0)
    st = make({"shared": ["g"], "h": ["h"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "h", 300, 0.95, source="g")
    # no version yet (a fork on its way): nothing, not even a hold
    assert run(st, T0, config=cfg)[1] == []
    st = on_promotion(st, "h", version=1, now=T0, config=cfg)
    feed(st, "h", 300, 0.95, source="g")  # the forked version still leaks
    st, ds = run(st, T0 + 60, config=cfg)
    assert acts(ds) == [("retrain", "h", "applied")] and ds[0].train == ("h",)
    assert "leaking 5.0% crosstalk from g in its own adapter h" in ds[0].reason


def test_leak_from_a_task_no_longer_in_the_adapter_is_not_forked_but_rebalanced() -> None:
    # "x" was forked out earlier; the shared adapter's weights still answer some of h's
    # requests in x's style. Leaving g would not remove that source: retrain, don't fork.
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)
    st = make({"shared": ["h", "g"], "x": ["x"]},
              {"h": NEG_HIGH, "g": POS_LOW, "x": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.95, source="x")
    st, ds = run(st, T0, config=cfg)
    assert acts(ds) == [("rebalance", "h", "applied")]
    st = on_rejection(st, "shared", now=T0 + 30, config=cfg)
    more = {"h": TaskSignals(data_size=10_000), "g": TaskSignals(data_size=10_000)}
    st, ds = run(st, T0 + 60, signals=more, config=cfg)
    assert acts(ds) == [("rebalance", "h", "applied")]  # the same leak from g is forked (above)


def _rejected_rounds(
    st: PolicyState, cfg: PolicyConfig, rounds: int,
    affinity: dict[tuple[str, str], float] | None = None,
) -> list[tuple[str, str, str]]:
    """Up to ``rounds`` times: decide, the gate rejects what "shared" trained, new data
    arrives for "m" and "g". Stops after a fork; returns every decision made."""
    seen: list[tuple[str, str, str]] = []
    size = 1000
    for i in range(rounds):
        size += CFG.min_new_examples
        sig = {"m": TaskSignals(data_size=size), "g": TaskSignals(data_size=size)}
        st, ds = run(st, T0 + 100 * i, signals=sig, config=cfg, affinity=affinity)
        seen += acts(ds)
        if any(a == "fork" for a, _, _ in acts(ds)):
            break
        st = on_rejection(st, "shared", now=T0 + 100 * i + 30, config=cfg)
    return seen


def test_a_fork_lifts_the_rejection_wait_of_the_adapter_it_leaves() -> None:
    # A rebalance for x is rejected (it hurt h); x is forked. The shared version still serving
    # h learnt x's style, so h leaks x's: that is retrained now, not after min_new_examples
    # more examples (at 5 % of answers rated, about 6,500 requests).
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)
    st = make({"shared": ["h", "x", "g"]}, {"h": NEG_HIGH, "x": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "x", 300, 0.9, source="g")
    st, _ = _rebalance_rejected_then_forked(st, "x", cfg)
    assert st.adapters["shared"].tasks == ["g", "h"]
    assert st.adapters["shared"].retry_at_data is None
    feed(st, "h", 300, 0.92, source="x")  # the served shared version answers h in x's style
    st, ds = run(st, T0 + 120, config=cfg)
    assert acts(ds) == [("rebalance", "h", "applied")] and ds[0].train == ("shared",)
    assert "leaking 8.0% crosstalk from x" in ds[0].reason


@pytest.mark.parametrize(("affinity", "forked"), [
    ({("m", "g"): 0.03, ("g", "m"): 0.02}, False),  # compatible: stays shared
    (None, True),  # unmeasured affinity: neutral, so the leak counts toward a fork
])
def test_leak_from_a_compatible_co_task_is_rebalanced_not_forked(
    affinity: dict[tuple[str, str], float] | None, forked: bool
) -> None:
    # A medium-risk thanks-like task "m" picks up some of its cheerful partner's style.
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)
    st = make({"shared": ["m", "g"]}, {"m": POS_MED, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "m", 300, 0.9, source="g")
    seen = _rejected_rounds(st, cfg, 4, affinity)
    limit = cfg.for_risk("medium").fork_after_rebalances
    assert limit is not None and limit < 4
    if forked:
        assert seen[-1] == ("fork", "m", "applied") and len(seen) == limit + 1
    else:
        assert seen == [("rebalance", "m", "applied")] * 4


@pytest.mark.parametrize(("events", "forked"), [(60, False), (600, True)])
def test_a_medium_risk_leak_forks_only_when_the_window_proves_it(events: int, forked: bool) -> None:
    # The same 10 % leak: 6 flags in 60 could be chance at medium risk's 5 %, 60 in 600 are not.
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)
    st = make({"shared": ["m", "g"]}, {"m": POS_MED, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "m", events, 0.90, source="g")
    win = st.tasks["m"].window
    assert win.leaking == forked and win.evidence_short != forked
    seen = _rejected_rounds(st, cfg, 3)
    fork = ("fork", "m", "applied")
    assert (fork in seen) == forked, seen
    if not forked:  # the engine waits, and says so once
        assert seen == [("hold", "m", "applied")]


def test_a_faded_leak_still_latched_rebalances_but_does_not_fork() -> None:
    # Latched on a 20 % leak, then 3 %: the latch holds (not proven below 2.5 %), but a
    # medium-risk fork needs the leak proven above the switch-off rate now.
    cfg = replace(CFG, cooldown_s=0, rebalance_patience_s=10**9)
    st = make({"shared": ["m", "g"]}, {"m": POS_MED, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "m", 100, 0.80, source="g")
    feed(st, "m", 500, 0.97, source="g")
    win = st.tasks["m"].window
    assert win.leaking and win.crosstalk_rate == pytest.approx(0.03)
    seen = _rejected_rounds(st, cfg, 4)
    assert seen == [("rebalance", "m", "applied")] * 4


def test_a_small_adapter_retries_after_a_tenth_more_data_not_min_new_examples() -> None:
    # A rare forked task (200 examples) must not wait for 200 more after one rejected try.
    cfg = replace(CFG, cooldown_s=0)
    st = make({"shared": ["g"], "h": ["h"]}, {"h": NEG_HIGH, "g": POS_LOW})
    st = on_promotion(st, "h", version=1, now=T0 - 60, config=cfg)
    feed(st, "h", 300, 0.9, source="g")  # leaking in its own adapter: retrain it
    sig = {"h": TaskSignals(data_size=200), "g": TaskSignals(data_size=5000)}
    st, ds = run(st, T0, signals=sig, config=cfg)
    assert acts(ds) == [("retrain", "h", "applied")]
    st = on_rejection(st, "h", now=T0 + 30, config=cfg)
    assert st.adapters["h"].retry_at_data == 200 + 20  # 10 % of 200 < min_new_examples
    sig["h"] = TaskSignals(data_size=219)
    st, ds = run(st, T0 + 60, signals=sig, config=cfg)
    assert [d.signals.get("blocked_by") for d in ds] == ["rejected"]
    sig["h"] = TaskSignals(data_size=220)
    st, ds = run(st, T0 + 120, signals=sig, config=cfg)
    assert acts(ds) == [("retrain", "h", "applied")]
    # A big adapter still waits for min_new_examples.
    st = on_rejection(st, "shared", now=T0 + 130, config=cfg)
    assert st.adapters["shared"].retry_at_data == 5000 + CFG.min_new_examples


def test_a_high_risk_task_retrains_its_adapter_on_its_own_new_examples() -> None:
    """A forked high-risk task gets little traffic: its own threshold (high risk: 100), not the
    adapter-wide one, decides when its feedback is trained on; a low-risk task has none."""
    cfg = replace(CFG, cooldown_s=0)
    st = make({"shared": ["g"], "h": ["h"]}, {"h": NEG_HIGH, "g": POS_LOW})
    for name in ("h", "shared"):
        st = on_promotion(st, name, version=1, now=T0, config=cfg)
    limit = cfg.for_risk("high").min_new_examples
    assert limit is not None and limit < cfg.min_new_examples
    few = {"h": TaskSignals(new_examples=limit - 1), "g": TaskSignals(new_examples=limit)}
    assert run(st, T0 + 60, signals=few, config=cfg)[1] == []  # g (low risk) has no own bar
    enough = {"h": TaskSignals(new_examples=limit), "g": TaskSignals(new_examples=limit)}
    st, ds = run(st, T0 + 60, signals=enough, config=cfg)
    assert acts(ds) == [("retrain", "h", "applied")] and ds[0].train == ("h",)
    assert f"{limit} new examples for h (high-risk threshold {limit})" in ds[0].reason
    # Off (None): only the adapter-wide threshold counts.
    off = PolicyConfig.from_dict({**cfg.to_dict(), "risk": {"high": {"min_new_examples": None}}})
    st2 = make({"h": ["h"]}, {"h": NEG_HIGH})
    st2 = on_promotion(st2, "h", version=1, now=T0, config=off)
    assert run(st2, T0 + 60, signals=enough, config=off)[1] == []
