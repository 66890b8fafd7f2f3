"""``bench/loop.py``'s comparisons: runs on the same requests are also compared paired; results
files of other seeds gather into one table, policies compared on the seeds both ran."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.loop import compare, gather, summarize
from bench.loop_stats import paired_difference, pooled_vs, rate_difference


def _report(chunks: list[tuple[int, int]], leaked: int = 0) -> dict[str, Any]:
    """A simulate report (the fields ``summarize`` reads) whose final phase has ``chunks`` of
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


def test_same_requests_get_a_paired_interval_and_other_requests_do_not() -> None:
    risk = {"apology": "high"}
    adaptive = [summarize(_report([(10, 9), (12, 12), (11, 8)]), risk)]
    isolated = [summarize(_report([(10, 10), (12, 12), (11, 10)]), risk)]
    assert adaptive[0]["final_chunks"] == {"apology": [[10, 9], [12, 12], [11, 8]]}  # steady left out
    row = pooled_vs(adaptive, isolated)["apology"]
    assert row["accepted"] == [29, 32] and row["events"] == [33, 33]
    d, lo, hi = paired_difference([(10, 9, 10), (12, 12, 12), (11, 8, 10)])
    assert row["paired_ci95"] == [round(lo, 4), round(hi, 4)] and round(d, 4) == row["difference"]
    # Chunks that answered different requests (other event counts) are not paired.
    other = [summarize(_report([(11, 10), (11, 11), (11, 10)]), risk)]
    unpaired = pooled_vs(adaptive, other)["apology"]
    assert "paired_ci95" not in unpaired
    _, nlo, nhi = rate_difference(29, 33, 31, 33)
    assert unpaired["ci95"] == [round(nlo, 4), round(nhi, 4)]


def _results(path: Path, seeds: list[int], runs: dict[str, list[dict[str, Any]]]) -> Path:
    path.write_text(json.dumps({"scenario": "s", "seeds": seeds,
                                "policies": {p: {"runs": rs} for p, rs in runs.items()}}))
    return path


def test_gathered_files_compare_policies_on_the_seeds_both_ran(tmp_path: Path) -> None:
    risk = {"apology": "high"}

    def run(accepted: int, leaked: int) -> dict[str, Any]:
        return summarize(_report([(50, accepted), (50, 50)], leaked), risk)

    first = _results(tmp_path / "a.json", [1, 2], {
        "adaptive": [run(49, 1), run(50, 0)], "isolated": [run(50, 0), run(48, 2)],
        "static": [run(30, 20), run(40, 10)]})
    second = _results(tmp_path / "b.json", [3], {"adaptive": [run(47, 3)],
                                                 "isolated": [run(50, 0)]})
    again = _results(tmp_path / "c.json", [1], {"adaptive": [run(49, 1)]})  # a regathered copy
    runs = gather([first, second, again], "s")
    assert [r["seed"] for r in runs["adaptive"]] == [1, 2, 3]
    assert [r["seed"] for r in runs["static"]] == [1, 2]
    rows, goals = compare(runs, risk, Console(file=io.StringIO()))
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
    # A gathered table gathers again (static has fewer seeds than the file).
    gathered = tmp_path / "gathered.json"
    gathered.write_text(json.dumps({"scenario": "s", "seeds": [1, 2, 3], "policies": rows}))
    assert gather([gathered], "s") == runs
    # Exactly 2 points under isolated (0.96 - 0.98 in floats is a hair below -0.02) is within.
    two = {"adaptive": [{**runs["adaptive"][0], "acceptance": {"apology": 0.96}}],
           "isolated": [{**runs["isolated"][0], "acceptance": {"apology": 0.98}}]}
    assert compare(two, risk, Console(file=io.StringIO()))[1]["adaptive_within_2pts_of_isolated"]
    # Static ran on seeds 1 and 2 only: 15 % against adaptive's 0.5 % on those seeds (not 1.3 %).
    assert goals["static_over_adaptive_high_risk"] == 30.0


def test_gather_refuses_two_different_runs_of_one_seed_and_other_scenarios(tmp_path: Path) -> None:
    risk = {"apology": "high"}
    a = _results(tmp_path / "a.json", [1], {"adaptive": [summarize(_report([(50, 49)]), risk)]})
    b = _results(tmp_path / "b.json", [1], {"adaptive": [summarize(_report([(50, 48)]), risk)]})
    with pytest.raises(SystemExit, match="adaptive on seed 1 differs"):
        gather([a, b], "s")
    with pytest.raises(SystemExit, match="scenario 's', not 'other'"):
        gather([a], "other")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"not a bench/loop\.py results file"):
        gather([tmp_path / "bad.json"], "s")
