"""``python -m bench.loop``'s comparisons, run as a maintainer runs it: runs on the same requests
are also compared paired; results files of other seeds gather into one table, policies compared
on the seeds both ran. The statistics themselves are doctested in ``bench/loop_stats.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT

# A suite whose only high-risk task is apology.
SUITE = ROOT / "tests" / "training" / "suite.yaml"
# Each test runs the bench as a maintainer does, in subprocesses: seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture()
def scenario(tmp_path: Path) -> str:
    path = tmp_path / "scenario.yaml"
    path.write_text(f"seed: 1\nsuite: {SUITE}\n"
                    "phases:\n  - {name: after, events: 10, traffic: {apology: 1.0}}\n")
    return str(path)


def _report(chunks: list[tuple[int, int]], leaked: int = 0) -> dict[str, Any]:
    """A simulate report (the fields the bench reads) whose final phase has ``chunks`` of
    (events, accepted) for one task, apology, ``leaked`` of whose answers were crosstalk."""
    n, k = sum(c[0] for c in chunks), sum(c[1] for c in chunks)
    row = {"events": n, "acceptance": k / n, "crosstalk_rate": leaked / n, "crosstalk_sources": {}}
    series = [{"at_event": 50, "phase": "steady",
               "tasks": {"apology": {"events": 9, "acceptance": 0.0}}}]
    series += [{"at_event": 100 + 50 * i, "phase": "after",
                "tasks": {"apology": {"events": e, "acceptance": a / e}}}
               for i, (e, a) in enumerate(chunks)]
    return {"phases": [{"name": "steady", "tasks": {}}, {"name": "after", "tasks": {"apology": row}}],
            "series": series, "adapters": {"shared": {"tasks": ["apology"]}}, "decisions": [],
            "training_runs": [], "seconds": 1.0}


def _bench(scenario: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m bench.loop`` on ``scenario`` (the last --scenario given wins)."""
    return subprocess.run([sys.executable, "-m", "bench.loop", "--scenario", scenario, *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def _reused(scenario: str, workdir: Path, out: Path, seeds: list[int],
            reports: dict[str, list[dict[str, Any]]], *args: str) -> dict[str, Any]:
    """The bench's results for ``reports`` (per policy, one per seed) left in ``workdir`` as
    earlier runs, read back with ``--reuse`` (nothing is simulated)."""
    for policy, rs in reports.items():
        for seed, report in zip(seeds, rs, strict=True):
            (workdir / f"{policy}-{seed}").mkdir(parents=True)
            (workdir / f"{policy}-{seed}" / "report.json").write_text(json.dumps(report))
    proc = _bench(scenario, "--reuse", "--workdir", workdir, "--seeds", *map(str, seeds),
                  "--policies", *reports, "--out", out, *args)
    assert proc.returncode == 0, proc.stderr
    assert "final phase per task" in proc.stdout  # the tables
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_same_requests_get_a_paired_interval_and_other_requests_do_not(tmp_path: Path, scenario: str) -> None:
    paired = _reused(scenario, tmp_path / "a", tmp_path / "a.json", [1], {
        "adaptive": [_report([(10, 9), (12, 12), (11, 8)])],
        "isolated": [_report([(10, 10), (12, 12), (11, 10)])]})
    run = paired["policies"]["adaptive"]["runs"][0]
    assert run["final_chunks"] == {"apology": [[10, 9], [12, 12], [11, 8]]}  # steady left out
    row = paired["policies"]["adaptive"]["pooled_vs_isolated"]["apology"]
    assert row["accepted"] == [29, 32] and row["events"] == [33, 33]
    assert row["difference"] == round(29 / 33 - 32 / 33, 4)
    (lo, hi), (plo, phi) = row["ci95"], row["paired_ci95"]
    assert plo <= row["difference"] <= phi and lo <= row["difference"] <= hi
    assert phi - plo < hi - lo  # pairing takes the requests' own spread out
    # Chunks that answered different requests (other event counts) are not paired.
    other = _reused(scenario, tmp_path / "b", tmp_path / "b.json", [1], {
        "adaptive": [_report([(10, 9), (12, 12), (11, 8)])],
        "isolated": [_report([(11, 10), (11, 11), (11, 10)])]})
    unpaired = other["policies"]["adaptive"]["pooled_vs_isolated"]["apology"]
    assert "paired_ci95" not in unpaired and unpaired["accepted"] == [29, 31]


def test_gathered_files_compare_policies_on_the_seeds_both_ran(tmp_path: Path, scenario: str) -> None:
    def run(accepted: int, leaked: int) -> dict[str, Any]:
        return _report([(50, accepted), (50, 50)], leaked)

    first = _reused(scenario, tmp_path / "w1", tmp_path / "a.json", [1, 2], {
        "adaptive": [run(49, 1), run(50, 0)], "isolated": [run(50, 0), run(48, 2)],
        "static": [run(30, 20), run(40, 10)]})
    _reused(scenario, tmp_path / "w2", tmp_path / "b.json", [3], {"adaptive": [run(47, 3)],
                                                      "isolated": [run(50, 0)]})
    _reused(scenario, tmp_path / "w3", tmp_path / "c.json", [1], {"adaptive": [run(49, 1)]})  # a rerun
    assert first["seeds"] == [1, 2]
    proc = _bench(scenario, "--gather", tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json",
                  "--out", tmp_path / "gathered.json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "gathered.json").read_text())
    rows, goals = out["policies"], out["goals"]
    assert out["seeds"] == [1, 2, 3] and rows["adaptive"]["seeds"] == [1, 2, 3]
    assert rows["static"]["seeds"] == [1, 2]
    # Per seed: -1, +2 and -3 points against isolated on the same seed.
    assert [round(g, 2) for g in rows["adaptive"]["min_acceptance_gap_vs_isolated"]] == [-0.01, 0.02, -0.03]
    assert goals["adaptive_within_2pts_of_isolated"] is False
    # Pooled: 296 of 300 against 298 of 300, -0.7 points.
    assert rows["adaptive"]["pooled_vs_isolated"]["apology"]["accepted"] == [296, 298]
    assert goals["adaptive_within_2pts_of_isolated_pooled"] is True
    # Crosstalk 1 % and 3 % on seeds 1 and 3: one seed over the line, the pool (4 of 300) not.
    assert goals["adaptive_high_risk_crosstalk_le_2pct"] is False
    assert rows["adaptive"]["pooled_high_risk_crosstalk"]["apology"]["leaked"] == 4
    assert goals["adaptive_high_risk_crosstalk_le_2pct_pooled"] is True
    assert goals["adaptive_tasks_still_share"] is False  # one task per adapter here
    # Static ran on seeds 1 and 2 only: 15 % against adaptive's 0.5 % on those seeds (not 1.3 %).
    assert goals["static_over_adaptive_high_risk"] == 30.0
    # A gathered table gathers again (static has fewer seeds than the file).
    again = _bench(scenario, "--gather", tmp_path / "gathered.json", "--out", tmp_path / "again.json")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["policies"] == rows


def test_exactly_two_points_under_isolated_is_within(tmp_path: Path, scenario: str) -> None:
    # 0.96 - 0.98 in floats is a hair below -0.02.
    out = _reused(scenario, tmp_path / "w", tmp_path / "a.json", [1], {
        "adaptive": [_report([(50, 48), (50, 48)])], "isolated": [_report([(50, 49), (50, 49)])]})
    assert out["goals"]["adaptive_within_2pts_of_isolated"] is True


def test_gather_refuses_two_different_runs_of_one_seed_and_other_scenarios(
        tmp_path: Path, scenario: str) -> None:
    _reused(scenario, tmp_path / "w1", tmp_path / "a.json", [1], {"adaptive": [_report([(50, 49)])]})
    _reused(scenario, tmp_path / "w2", tmp_path / "b.json", [1], {"adaptive": [_report([(50, 48)])]})
    both = _bench(scenario, "--gather", tmp_path / "a.json", tmp_path / "b.json",
                  "--out", tmp_path / "x.json")
    assert both.returncode != 0 and "adaptive on seed 1 differs" in both.stderr
    other = _bench(scenario, "--gather", tmp_path / "a.json", "--scenario", "builtin:smoke",
                   "--out", tmp_path / "x.json")
    assert other.returncode != 0
    assert f"scenario '{scenario}', not 'builtin:smoke'" in other.stderr
    (tmp_path / "bad.json").write_text("{}")
    bad = _bench(scenario, "--gather", tmp_path / "bad.json", "--out", tmp_path / "x.json")
    assert bad.returncode != 0 and "not a bench/loop.py results file" in bad.stderr
    assert "Traceback" not in both.stderr + other.stderr + bad.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_bad_feedback_override_stops_the_bench_before_any_run(tmp_path: Path, scenario: str) -> None:
    for item, said in (("rated=2", "between 0 and 1"), ("rate=0.1", "want KEY=VALUE"),
                       ("post_unrated=maybe", "want KEY=VALUE")):
        proc = _bench(scenario, "--feedback", item, "--workdir", tmp_path / "w", "--out", tmp_path / "x.json")
        assert proc.returncode != 0 and said in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "x.json").exists()


def test_gathered_files_keep_their_overrides_and_refuse_to_mix_them(
        tmp_path: Path, scenario: str) -> None:
    thin = ("--feedback", "rated=0.05", "--feedback", "post_unrated=true")
    _reused(scenario, tmp_path / "w1", tmp_path / "a.json", [1], {"adaptive": [_report([(50, 49)])]},
            *thin)
    _reused(scenario, tmp_path / "w2", tmp_path / "b.json", [2], {"adaptive": [_report([(50, 48)])]},
            *thin)
    _reused(scenario, tmp_path / "w3", tmp_path / "c.json", [3], {"adaptive": [_report([(50, 47)])]})
    ok = _bench(scenario, "--gather", tmp_path / "a.json", tmp_path / "b.json",
                "--out", tmp_path / "ab.json")
    assert ok.returncode == 0, ok.stderr
    gathered = json.loads((tmp_path / "ab.json").read_text())
    assert gathered["feedback_overrides"] == {"rated": 0.05, "post_unrated": True}
    assert gathered["seeds"] == [1, 2]
    mixed = _bench(scenario, "--gather", tmp_path / "ab.json", tmp_path / "c.json",
                   "--out", tmp_path / "x.json")
    assert mixed.returncode != 0 and "ran with other settings" in mixed.stderr, mixed.stderr
    assert "feedback_overrides {} against {'rated': 0.05, 'post_unrated': True}" in mixed.stderr
    assert "Traceback" not in mixed.stderr and not (tmp_path / "x.json").exists()


def test_a_fork_where_static_never_leaks_is_judged_only_there(tmp_path: Path, scenario: str) -> None:
    fork = {"at_event": 0, "action": "fork", "task": "apology", "adapter": "apology",
            "reason": "negative transfer", "status": "applied"}
    forked = {**_report([(50, 50)]), "decisions": [fork]}
    clean = _reused(scenario, tmp_path / "w1", tmp_path / "a.json", [1, 2], {
        "adaptive": [forked, _report([(50, 50)])], "static": [_report([(50, 50)], 1)] * 2})
    # static's worst phase: 1 leak in 50 answers, 2 %, on the line: never leaked
    assert clean["policies"]["static"]["runs"][0]["high_risk_crosstalk_by_phase"] == {
        "steady": 0.0, "after": 0.02}
    assert clean["goals"]["static_never_lets_high_risk_leak"] is True
    assert clean["goals"]["adaptive_no_fork_where_static_never_leaks"] is False
    leaky = _reused(scenario, tmp_path / "w2", tmp_path / "b.json", [1], {
        "adaptive": [forked], "static": [_report([(50, 50)], 2)]})
    assert leaky["goals"]["static_never_lets_high_risk_leak"] is False
    assert "adaptive_no_fork_where_static_never_leaks" not in leaky["goals"]


def test_a_merge_counts_as_back_only_where_the_run_ends_serving_it_there(
    tmp_path: Path, scenario: str,
) -> None:
    def decision(at: int, action: str, adapter: str) -> dict[str, Any]:
        return {"at_event": at, "action": action, "task": "apology", "adapter": adapter,
                "reason": action, "status": "applied"}

    back = {**_report([(50, 50)]),
            "decisions": [decision(0, "fork", "apology"), decision(50, "merge", "shared")]}
    out = {**back, "decisions": [*back["decisions"], decision(100, "fork", "apology")],
           "adapters": {"shared": {"tasks": []}, "apology": {"tasks": ["apology"]}}}
    data = _reused(scenario, tmp_path / "w", tmp_path / "m.json", [1, 2], {"adaptive": [back, out]})
    runs = data["policies"]["adaptive"]["runs"]
    assert [(r["forks"], r["merges"], r["merged_back"]) for r in runs] == [
        (1, 1, ["apology"]), (2, 1, [])]
