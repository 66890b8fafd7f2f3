"""``bench/loop.py``'s pooled comparison: runs on the same requests are also compared paired."""

from __future__ import annotations

from typing import Any

from bench.loop import paired_difference, pooled_vs, rate_difference, summarize


def _report(chunks: list[tuple[int, int]]) -> dict[str, Any]:
    """A simulate report (the fields ``summarize`` reads) whose final phase has ``chunks`` of
    (events, accepted) for one task, apology."""
    n, k = sum(c[0] for c in chunks), sum(c[1] for c in chunks)
    row = {"events": n, "acceptance": k / n, "crosstalk_rate": 0.0, "crosstalk_sources": {}}
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
