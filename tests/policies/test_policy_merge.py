"""Merge in the loop: a task forked during a surge goes back to its adapter after it.

The engine runs on the simulation's own configuration and event clock (``SIM_POLICY``,
``SIM_SECONDS_PER_EVENT``), a decision every 50 requests as ``adaptd simulate`` takes them,
and a job's version is promoted before the next 50 (the synchronous simulation). A
high-risk task shares an adapter with a medium-risk task of the same tone; while the
medium-risk task's traffic surges, a fifth of the high-risk task's answers carry its style
in the shared adapter, and none do once the surge is over or in the task's own adapter.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from daemon.sim.run import SIM_POLICY, SIM_SECONDS_PER_EVENT
from policies import (
    Decision,
    PolicyConfig,
    PolicyState,
    TaskProfile,
    decide,
    init_state,
    observe,
    observed_tasks,
    on_promotion,
    on_rejection,
    record_eval,
)
from tests.policies.test_policy_engine import roundtrip

CFG = PolicyConfig.from_dict({**SIM_POLICY, "seconds_per_event": SIM_SECONDS_PER_EVENT})
PROFILES = {"sorry": TaskProfile("high", "formal"), "notice": TaskProfile("medium", "formal")}
# (phase, requests, share of "sorry"): the surge is as long as the builtin scenarios'.
PHASES = (("steady", 600, 0.3), ("surge", 1200, 0.1), ("after", 1800, 0.3))
CHUNK = 50


Affinity = Mapping[tuple[str, str], float]


def run_surge(affinity: Affinity, *, remeasured: Affinity | None = None,
              reject_merges: bool = False) -> tuple[PolicyState, list[tuple[int, Decision]]]:
    """``remeasured``: the estimate from the surge on, as the runs of the adapter a forked
    task left measure it (``observed_tasks``). ``reject_merges``: the gate rejects every
    version a merge trains."""
    st = init_state({"shared": ["notice", "sorry"]}, PROFILES, CFG,
                    data_sizes=dict.fromkeys(PROFILES, 1000),
                    baselines=dict.fromkeys(PROFILES, 0.9))
    st = on_promotion(st, "shared", version=1, now=0.0, config=CFG)
    versions = {"shared": 1}
    training: list[tuple[str, str]] = []
    log: list[tuple[int, Decision]] = []
    served = {"sorry": 0, "notice": 0}
    event = 0
    for phase, length, share in PHASES:
        for _ in range(length // CHUNK):
            for a, action in training:  # the job finished before the next requests: promoted
                done = (event + 1) * SIM_SECONDS_PER_EVENT  # by the tick after the one that
                if reject_merges and action == "merge":  # decided it (or rejected)
                    st = on_rejection(st, a, now=done, config=CFG)
                    continue
                versions[a] = versions.get(a, 0) + 1
                st = on_promotion(st, a, version=versions[a], now=done, config=CFG)
            for j in range(CHUNK):
                task = "sorry" if j < round(CHUNK * share) else "notice"
                i = served[task]
                served[task] += 1
                shared = "notice" in st.adapters[st.tasks[task].adapter].tasks
                leak = task == "sorry" and phase == "surge" and shared and i % 5 == 0
                observe(st, task, not leak and i % 10 != 9,
                        crosstalk_source="notice" if leak else None, origin="auto")
                event += 1
            aff = affinity if remeasured is None or phase == "steady" else remeasured
            st, ds = decide(st, {}, now=event * SIM_SECONDS_PER_EVENT, config=CFG, affinity=aff)
            st = roundtrip(st)
            log += [(event, d) for d in ds]
            training = [(a, d.action) for d in ds for a in d.train if a in st.adapters]
    return st, log


def structural(log: list[tuple[int, Decision]]) -> list[tuple[int, str, str]]:
    return [(at, d.action, d.task) for at, d in log if d.action in ("fork", "merge", "rollback")]


def test_sim_merge_window_is_a_surge_long() -> None:
    assert CFG.merge_after_s / SIM_SECONDS_PER_EVENT == PHASES[1][1]


@pytest.mark.parametrize("affinity", [
    {("sorry", "notice"): 0.04, ("notice", "sorry"): 0.03},
    # Within affinity_noise (0.02) of 0: no evidence of harm, the bar bootstrap shares on.
    {("sorry", "notice"): -0.015, ("notice", "sorry"): 0.005},
])
def test_a_task_forked_in_a_surge_merges_back_after_it(
    affinity: dict[tuple[str, str], float],
) -> None:
    st, log = run_surge(affinity)
    moves = structural(log)
    surge_end = PHASES[0][1] + PHASES[1][1]
    assert [(a, t) for _, a, t in moves] == [("fork", "sorry"), ("merge", "sorry")], moves
    (forked, _, _), (merged, _, _) = moves
    assert PHASES[0][1] < forked < surge_end < merged  # forked in the surge, merged after it
    assert (merged - forked) * SIM_SECONDS_PER_EVENT >= CFG.merge_after_s
    assert list(st.adapters) == ["shared"] and st.adapters["shared"].tasks == ["notice", "sorry"]
    assert st.adapters["shared"].merging == {}  # the merged version serves
    merge = next(d for _, d in log if d.action == "merge")
    assert merge.adapter == "shared" and merge.signals["from_adapter"] == "sorry"
    assert merge.signals["crosstalk"][0] == 0 and merge.signals["leak_upper"] < 0.02
    assert not st.tasks["sorry"].window.leaking  # and it stays clean in the shared adapter


def test_affinity_measured_one_way_only_never_merges() -> None:
    st, log = run_surge({("sorry", "notice"): 0.04})
    assert [(a, t) for _, a, t in structural(log)] == [("fork", "sorry")]
    assert st.tasks["sorry"].adapter == "sorry" and st.tasks["sorry"].compatible_since is None


def test_negative_transfer_beyond_the_noise_forks_at_once_and_never_merges() -> None:
    st, log = run_surge({("sorry", "notice"): 0.01, ("notice", "sorry"): -0.03})
    moves = structural(log)
    assert [(a, t) for _, a, t in moves] == [("fork", "sorry")], moves
    assert moves[0][0] == CHUNK  # on the first tick, before any leak
    assert st.tasks["sorry"].adapter == "sorry" and st.tasks["sorry"].compatible_since is None
    assert observed_tasks(st, "shared") == ["sorry"]  # still measured, so it can change


def test_a_fork_on_negative_transfer_merges_once_remeasured_within_the_noise() -> None:
    st, log = run_surge({("sorry", "notice"): 0.01, ("notice", "sorry"): -0.03},
                        remeasured={("sorry", "notice"): 0.0, ("notice", "sorry"): -0.012})
    moves = structural(log)
    assert [(a, t) for _, a, t in moves] == [("fork", "sorry"), ("merge", "sorry")], moves
    (forked, _, _), (merged, _, _) = moves
    assert forked == CHUNK
    # Compatible from the first tick that reads the new estimate, merged a window later.
    assert (merged - PHASES[0][1] - CHUNK) * SIM_SECONDS_PER_EVENT >= CFG.merge_after_s
    assert st.tasks["sorry"].adapter == "shared" and observed_tasks(st, "shared") == []


def test_a_merge_the_gate_rejects_is_undone_onto_the_adapter_that_still_serves() -> None:
    st, log = run_surge({("sorry", "notice"): 0.04, ("notice", "sorry"): 0.03},
                        reject_merges=True)
    moves = [(at, d) for at, d in log if d.action in ("fork", "merge")]
    assert [d.action for _, d in moves][:3] == ["fork", "merge", "fork"], moves
    (_, fork), (merged_at, _), (back_at, back) = moves[:3]
    assert back_at == merged_at + CHUNK  # the tick after the rejection
    assert back.signals["unmerge"] and back.train == () and back.adapter == fork.adapter
    # Every further merge waits a whole merge_after_s again, and is undone again.
    assert all(d.action == ("merge", "fork")[i % 2] for i, (_, d) in enumerate(moves[1:]))
    again = [at for at, d in moves[3:] if d.action == "merge"]
    assert all((at - back_at) * SIM_SECONDS_PER_EVENT >= CFG.merge_after_s for at in again)
    assert st.adapters["shared"].tasks == ["notice"] and st.adapters["shared"].merging == {}
    iso = st.adapters[fork.adapter]
    assert iso.tasks == ["sorry"] and iso.version == 1  # its first version, never replaced
    assert st.tasks["sorry"].forked_from == "shared" and observed_tasks(st, "shared") == ["sorry"]


def test_a_merge_waits_for_the_isolated_adapters_running_job() -> None:
    st, log = run_surge({("sorry", "notice"): 0.04, ("notice", "sorry"): 0.03},
                        reject_merges=True)
    aff = {("sorry", "notice"): 0.04, ("notice", "sorry"): 0.03}
    now = log[-1][0] * SIM_SECONDS_PER_EVENT + 10 * CFG.merge_after_s
    st.adapters["sorry"].pending_since = now  # a retrain of the isolated adapter is running
    st, ds = decide(st, {}, now=now, config=CFG, affinity=aff)
    assert [d.action for d in ds] == ["hold"] and "sorry still waiting" in ds[0].reason, ds
    st.adapters["sorry"].pending_since = None
    st, ds = decide(st, {}, now=now + 2, config=CFG, affinity=aff)
    assert [(d.action, d.task) for d in ds] == [("merge", "sorry")], ds


def test_a_rejected_merge_brings_the_tasks_already_there_no_closer_to_a_fork() -> None:
    aff = {("sorry", "notice"): 0.04, ("notice", "sorry"): 0.03}
    st, log = run_surge(aff, reject_merges=True)
    now = log[-1][0] * SIM_SECONDS_PER_EVENT + 10 * CFG.merge_after_s
    for _ in range(CFG.risk["medium"].fork_after_regressions or 2):
        st, ds = decide(st, {}, now=now, config=CFG, affinity=aff)
        assert [(d.action, d.task) for d in ds] == [("merge", "sorry")], ds
        # The merged version hurts notice in its eval, and the gate rejects it.
        st, regressed = record_eval(st, "shared", before={"notice": 0.9, "sorry": 0.9},
                                    after={"notice": 0.6, "sorry": 0.9}, config=CFG,
                                    targeted=["sorry"])
        assert set(regressed) == {"notice"} and st.tasks["notice"].regressions == 0
        st = on_rejection(st, "shared", now=now + 1, config=CFG)
        st, ds = decide(st, {}, now=now + 2, config=CFG, affinity=aff)
        assert [d.signals.get("unmerge") for d in ds] == [True], ds
        now += 2 * CFG.merge_after_s + 10
    assert st.adapters["shared"].tasks == ["notice"]
