"""The serving reconcile decision (policies/serving.py): what each replica holds, loads,
unloads, and when a promoted version is routed."""

from __future__ import annotations

import pytest

from policies.serving import (
    Candidate,
    Pending,
    ReplicaReport,
    judge_rollouts,
    parse_served,
    plan_replica,
    served_name,
    wanted,
)


def test_wanted_keeps_each_adapters_last_good_version() -> None:
    promoted = [Candidate(a, v, f"/{a}/v{v}") for a, v in
                [("shared", 1), ("shared", 2), ("shared", 4), ("apology", 1), ("apology", 2)]]
    w = wanted([("shared", 4, "/shared/v4"), ("apology", 1, "/apology/v1")],
               [Pending(1, "apology", 2, "/apology/v2")], promoted)
    assert {k: v.why for k, v in w.items()} == {
        "shared-v4": "routed", "shared-v2": "fallback",  # newest below the routed one
        "apology-v1": "routed", "apology-v2": "pending"}
    # An adapter no task routes to any more holds nothing.
    assert wanted([], [], promoted) == {}


def test_a_routed_version_stays_wanted_even_if_refused_elsewhere() -> None:
    w = wanted([("s", 3, "/p")], [Pending(1, "s", 4, "/q")], [Candidate("s", 2, "/r")],
               refused=["s-v3", "s-v4", "s-v2"])
    assert set(w) == {"s-v3"}


def test_plan_never_retries_a_refusal_and_keeps_grace() -> None:
    w = wanted([("s", 2, "/p2")], [Pending(1, "s", 3, "/p3")], [])
    plan = plan_replica(w, ["s-v1"], refused=["s-v3"], unwanted_since={"s-v1": 100.0},
                        now=130.0, grace_s=60.0, adapters=["s"])
    assert [x.served_as for x in plan.load] == ["s-v2"]
    assert plan.unload == [] and plan.unwanted_since == {"s-v1": 100.0}
    later = plan_replica(w, ["s-v1", "s-v2"], refused=["s-v3"], unwanted_since={"s-v1": 100.0},
                         now=160.0, grace_s=60.0, adapters=["s"])
    assert later.unload == ["s-v1"] and later.load == []


def test_judge_waits_for_every_reachable_replica() -> None:
    p = [Pending(7, "s", 2, "/p")]
    both = [ReplicaReport("a", True, frozenset({"s-v2"})), ReplicaReport("b", True)]
    assert judge_rollouts(p, both)[0].verdict == "wait"
    assert "not yet listed by b" in judge_rollouts(p, both)[0].reason
    nobody = [ReplicaReport("a", False), ReplicaReport("b", False)]
    verdict = judge_rollouts(p, nobody)[0]
    assert (verdict.verdict, verdict.reason) == ("route", "s-v2 listed by no reachable replica")


@pytest.mark.parametrize("bad", [("Shared", 1), ("a b", 1), ("x", 0), ("x", -2)])
def test_served_names_are_validated(bad: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        served_name(*bad)
    assert parse_served(f"{bad[0]}-v{bad[1]}") is None
