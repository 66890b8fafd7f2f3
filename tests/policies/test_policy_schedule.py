"""Decisions about whole adapters (policies.schedule) and the tick's bookkeeping
(policies.tick): pure functions of what the tick read."""

from __future__ import annotations

import json

import pytest

from policies import PolicyConfig, prior_ratios
from policies.schedule import (
    BOOTSTRAP_TRIES,
    AdapterFacts,
    StaleServing,
    bootstrap_decisions,
    rebuild_decisions,
    schedule_decisions,
)
from policies.tick import TickState

SIZES = {"a": 300, "b": 100, "c": 50}
ONE_JOB = PolicyConfig(max_concurrent_jobs=1)
TWO_JOBS = PolicyConfig(max_concurrent_jobs=2)


def boot(facts: list[AdapterFacts], *, mode: str = "adaptive", config: PolicyConfig = TWO_JOBS,
         routed: tuple[str, ...] = (), busy: tuple[str, ...] = (), running: int = 0,
         given_up: dict[str, float] | None = None) -> tuple[list, dict[str, float]]:
    return bootstrap_decisions(facts, routed=routed, busy=busy, running=running, mode=mode,
                               sizes=SIZES, config=config, now=42.0, given_up=given_up or {})


def test_first_versions_train_within_the_job_cap_in_name_order() -> None:
    facts = [AdapterFacts("zeta", ("c",)), AdapterFacts("alpha", ("a", "b"))]
    out, _ = boot(facts, config=ONE_JOB)
    assert [(d.action, d.adapter, d.train) for d in out] == [("retrain", "alpha", ("alpha",))]
    out, _ = boot(facts, config=TWO_JOBS)
    assert [d.adapter for d in out] == ["alpha", "zeta"]
    # A cap of 0 still lets one first version train: nothing is served without it.
    out, _ = boot(facts, config=PolicyConfig(max_concurrent_jobs=0))
    assert [d.adapter for d in out] == ["alpha"]
    out, _ = boot(facts, config=ONE_JOB, running=1)
    assert out == []


def test_served_promoted_or_busy_adapters_are_not_bootstrapped() -> None:
    facts = [AdapterFacts("served", ("a",)), AdapterFacts("promoted", ("b",), promoted=True),
             AdapterFacts("busy", ("c",)), AdapterFacts("half", ("a", "c"))]
    out, _ = boot(facts, routed=("a",), busy=("busy",))
    assert [(d.adapter, d.signals["tasks"]) for d in out] == [("half", ["a", "c"])]


@pytest.mark.parametrize("mode", ["adaptive", "static", "uniform", "isolated"])
def test_first_version_ratios_and_gate_follow_the_mode(mode: str) -> None:
    (d,), _ = boot([AdapterFacts("shared", ("a", "b", "c"))], mode=mode)
    ratios = d.job["ratios"]
    assert d.signals["ratios"] == ratios and abs(sum(ratios.values()) - 1) < 1e-9
    expected = {"adaptive": prior_ratios(SIZES, TWO_JOBS.ratios),
                "static": {"a": 2 / 3, "b": 2 / 9, "c": 1 / 9},
                "isolated": {"a": 2 / 3, "b": 2 / 9, "c": 1 / 9},
                "uniform": dict.fromkeys("abc", 1 / 3)}[mode]
    assert ratios == pytest.approx(expected)
    assert d.job["bootstrap"] is True and d.job["tasks"] == ["a", "b", "c"]
    assert ("gate" in d.job) == (mode in ("static", "uniform"))
    assert "train" not in d.job  # the first try keeps the configured seed


def test_rejected_first_versions_retry_with_new_seeds_then_give_up_once() -> None:
    seeds = []
    for tries in range(BOOTSTRAP_TRIES):
        (d,), gave = boot([AdapterFacts("s", ("a",), failed_bootstraps=tries)])
        seeds.append((d.job.get("train") or {}).get("seed"))
        assert gave == {}
    assert seeds == [None, 1, 2]
    facts = [AdapterFacts("s", ("a", "b"), failed_bootstraps=BOOTSTRAP_TRIES)]
    (hold,), gave = boot(facts, routed=("b",))
    assert hold.action == "hold" and hold.train == () and gave == {"s": 42.0}
    assert hold.reason == "hold bootstrap: 3 first versions of s were rejected; ['a'] stay on " \
                          "the base model"
    assert boot(facts, routed=("b",), given_up=gave) == ([], gave)  # said once


def rebuild(stale: list[StaleServing], facts: dict[str, AdapterFacts], *, mode: str = "adaptive",
            config: PolicyConfig = TWO_JOBS, busy: tuple[str, ...] = (), running: int = 0,
            given_up: dict[str, str] | None = None, build: str = "new") -> tuple[list, dict[str, str]]:
    return rebuild_decisions(stale, facts, build=build, busy=busy, running=running, mode=mode,
                             sizes=SIZES, config=config, now=1.0, given_up=given_up or {})


def stale(adapter: str, version: int = 2, tasks: tuple[str, ...] = ("a",)) -> StaleServing:
    return StaleServing(adapter, version, "old", tasks, f"base rebuilt: {adapter}")


def test_a_stale_adapter_retrains_once_on_its_current_ratios() -> None:
    facts = {"s": AdapterFacts("s", ("a", "b"), ratios={"a": 0.55, "b": 0.45}),
             "t": AdapterFacts("t", ("c",))}
    # Two routed versions of one adapter still make one retrain.
    out, _ = rebuild([stale("s", 2), stale("s", 3, ("b",)), stale("t", 1, ("c",))], facts)
    assert [(d.adapter, d.reason) for d in out] == [("s", "base rebuilt: s"),
                                                    ("t", "base rebuilt: t")]
    assert out[0].job == {"tasks": ["a", "b"], "ratios": {"a": 0.55, "b": 0.45},
                          "rebuild": "new"}
    assert out[0].signals["served_version"] == 2 and out[0].signals["served_build"] == "old"
    # No stored ratios: the prior; a baseline: its schedule's ratios and gate.
    assert out[1].job["ratios"] == {"c": 1.0}
    (d,), _ = rebuild([stale("s")], facts, mode="uniform")
    assert d.job["ratios"] == {"a": 0.5, "b": 0.5} and d.job["gate"] == {"mode": "mean"}


def test_rebuilds_respect_busy_adapters_and_the_job_cap() -> None:
    facts = {n: AdapterFacts(n, ("a",)) for n in ("s", "t")}
    assert rebuild([stale("s"), stale("t")], facts, busy=("s",))[0][0].adapter == "t"
    assert rebuild([stale("s"), stale("t")], facts, config=ONE_JOB)[0][0].adapter == "s"
    assert len(rebuild([stale("s"), stale("t")], facts, config=ONE_JOB)[0]) == 1
    assert rebuild([stale("s")], facts, running=2) == ([], {})
    assert rebuild([stale("gone")], facts) == ([], {})  # not an adapter of the engine


def test_a_rebuild_the_gate_keeps_rejecting_gives_up_once_per_build() -> None:
    facts = {"s": AdapterFacts("s", ("a", "b"), failed_rebuilds=BOOTSTRAP_TRIES - 1)}
    (d,), _ = rebuild([stale("s")], facts)
    assert d.job["train"] == {"seed": BOOTSTRAP_TRIES - 1}
    facts = {"s": AdapterFacts("s", ("a", "b"), failed_rebuilds=BOOTSTRAP_TRIES)}
    (hold,), gave = rebuild([stale("s", tasks=("a", "b"))], facts)
    assert hold.action == "hold" and gave == {"s": "new"}
    assert hold.reason == "hold rebuild: 3 versions of s on base build 'new' were rejected; " \
                          "a, b stay unservable"
    assert rebuild([stale("s")], facts, given_up=gave) == ([], gave)
    # Another build: its own tries, its own hold.
    assert rebuild([stale("s")], facts, given_up=gave, build="newer")[1] == {"s": "newer"}


def sched(facts: list[AdapterFacts], buffers: dict[str, int], *, config: PolicyConfig,
          mode: str = "isolated", busy: tuple[str, ...] = (), running: int = 0) -> list:
    return schedule_decisions(facts, buffers=buffers, busy=busy, running=running, mode=mode,
                              sizes=SIZES, config=config, now=0.0)


def test_the_baseline_schedule_retrains_on_enough_new_examples() -> None:
    facts = [AdapterFacts("x", ("a",)), AdapterFacts("y", ("b", "c")),
             AdapterFacts("z", ("c",))]
    buffers = {"a": 199, "b": 150, "c": 60}
    cfg = PolicyConfig(min_new_examples=200, max_concurrent_jobs=3)
    out = sched(facts, buffers, config=cfg, mode="static")
    assert [(d.adapter, d.signals["new_examples"]) for d in out] == [("y", 210)]
    assert out[0].job == {"tasks": ["b", "c"], "ratios": {"b": 2 / 3, "c": 1 / 3},
                          "gate": {"mode": "mean"}}
    buffers["a"] = 200
    assert [d.adapter for d in sched(facts, buffers, config=cfg)] == ["x", "y"]
    assert [d.adapter for d in sched(facts, buffers, config=cfg, busy=("x",))] == ["y"]
    assert [d.adapter for d in sched(facts, buffers, config=cfg, running=2)] == ["x"]
    none = PolicyConfig(min_new_examples=200, max_concurrent_jobs=0)
    assert sched(facts, buffers, config=none) == []
    assert "gate" not in sched(facts, buffers, config=cfg)[0].job  # isolated: per task
    with pytest.raises(ValueError, match="baseline modes"):
        sched(facts, buffers, config=cfg, mode="adaptive")


def test_tick_state_loads_stored_bookkeeping_and_round_trips() -> None:
    stored = {"jobs_seen": 7, "observed_total": 900, "sent": {"5": 10.0, "7": 20.0},
              "affinity": [["a", "b", -0.08], ["b", "a", 0.01]]}  # keys set so far
    t = TickState.from_dict(stored)
    assert (t.jobs_seen, t.clock_jobs, t.sent) == (7, 0, {5: 10.0, 7: 20.0})
    assert t.affinity == {("a", "b"): -0.08, ("b", "a"): 0.01}
    out = json.loads(json.dumps(t.to_dict()))
    assert {k: out[k] for k in stored} == stored
    assert set(out) == {"jobs_seen", "observed_total", "clock_jobs", "sent",
                        "bootstrap_given_up", "rebuild_given_up", "affinity"}
    assert TickState.from_dict(out) == t
    assert TickState.from_dict({}) == TickState()


def test_the_event_clock_steps_with_events_and_accounting_ticks() -> None:
    events = PolicyConfig(seconds_per_event=0.5)
    t = TickState(observed_total=100)
    assert t.clock(PolicyConfig(), wall=7.0) == 7.0
    assert t.clock(events, wall=7.0) == 50.0
    assert t.accounting_clock(events, wall=7.0) == 50.5
    t.accounted(events, 0)  # nothing new accounted: the clock stands
    assert t.clock_jobs == 0
    t.accounted(events, 3)
    assert (t.jobs_seen, t.clock_jobs, t.clock(events, wall=7.0)) == (3, 1, 50.5)
    t.accounted(PolicyConfig(), 4)  # on wall time nothing counts ticks
    assert (t.jobs_seen, t.clock_jobs) == (4, 1)
