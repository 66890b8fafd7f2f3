"""The statistics behind ``bench/loop.py``'s verdicts: rates pooled over seeds with 95 %
intervals, adaptive vs isolated unpaired and paired, and pooled high-risk crosstalk.

A final phase holds 50-150 events per task, so one answer moves a task's acceptance by about
one point and a per-seed verdict sits at the scenario's resolution. Pooling the seeds' final
phases per task gives the same comparison on several times the answers, with an interval that
tells a miss from noise.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from rich.table import Table

from policies.signals import wilson_lower

Run = dict[str, Any]  # one run's summary (``bench.loop.summarize``), with its "seed"


def paired_by_seed(runs: list[Run], baseline: list[Run]) -> tuple[list[Run], list[Run]]:
    """The two policies' runs on the seeds both have, in the same order (gathered results
    files need not hold every policy for every seed).

    >>> a, b = paired_by_seed([{"seed": 1}, {"seed": 2}], [{"seed": 2}, {"seed": 3}])
    >>> [r["seed"] for r in a], [r["seed"] for r in b]
    ([2], [2])
    """
    mine = {r["seed"]: r for r in runs}
    pairs = [(mine[r["seed"]], r) for r in baseline if r["seed"] in mine]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a rate seen ``k`` times in ``n``."""
    return wilson_lower(k, n, z), 1.0 - wilson_lower(n - k, n, z)


def rate_difference(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple[float, float, float]:
    """``k1/n1 - k2/n2`` with Newcombe's hybrid score interval (method 10, 1998); the
    paper's example, 56/70 vs 48/80, has the interval 0.0524 to 0.3339:

    >>> [round(x, 4) for x in rate_difference(56, 70, 48, 80)]
    [0.2, 0.0524, 0.3339]
    """
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1, z), wilson(k2, n2, z)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def paired_difference(chunks: list[tuple[int, int, int]], z: float = 1.96) -> tuple[float, float, float]:
    """Acceptance difference of two runs that answered the same requests, from chunks of
    ``(events, accepted by the first, accepted by the second)``, with a 95 % interval whose
    standard error comes from the chunks' paired differences (a ratio estimator over
    clusters): answers both runs got right or wrong add nothing to the spread, which an
    interval for two independent samples (``rate_difference``) cannot know.

    >>> d, lo, hi = paired_difference([(10, 9, 10), (10, 10, 10), (10, 8, 10), (10, 10, 10)])
    >>> round(d, 3), round(lo, 3), round(hi, 3)
    (-0.075, -0.169, 0.019)
    """
    n = sum(c[0] for c in chunks)
    if n == 0:
        return 0.0, 0.0, 0.0
    d = sum(c[1] - c[2] for c in chunks) / n
    m = len(chunks)
    resid = sum((c[1] - c[2] - d * c[0]) ** 2 for c in chunks)
    se = math.sqrt(m / (m - 1) * resid) / n if m > 1 else 0.0
    return d, d - z * se, d + z * se


def pooled_vs(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task, the final phases of all seeds pooled: acceptance vs the baseline's, with a
    95 % interval of the difference (empty when a run was recorded without event counts)."""
    out: dict[str, Any] = {}
    for task in sorted(runs[0]["acceptance"]):
        counts = []
        for rs in (runs, baseline):
            if any("events" not in r or task not in r["events"] for r in rs):
                return {}
            n = sum(r["events"][task] for r in rs)
            k = sum(round(r["acceptance"][task] * r["events"][task]) for r in rs)
            counts.append((k, n))
        (k1, n1), (k2, n2) = counts
        d, lo, hi = rate_difference(k1, n1, k2, n2)
        out[task] = {"accepted": [k1, k2], "events": [n1, n2], "difference": round(d, 4),
                     "ci95": [round(lo, 4), round(hi, 4)]}
        pairs = _paired_chunks(runs, baseline, task)
        if pairs:
            _, plo, phi = paired_difference(pairs)
            out[task]["paired_ci95"] = [round(plo, 4), round(phi, 4)]
    return out


def _paired_chunks(runs: list[dict[str, Any]], baseline: list[dict[str, Any]],
                   task: str) -> list[tuple[int, int, int]]:
    """``task``'s final-phase chunks of each seed's two runs, paired; empty unless every
    chunk holds the same number of events in both (the same requests: runs recorded before
    the simulator's separate random streams do not pair)."""
    pairs: list[tuple[int, int, int]] = []
    for a, b in zip(runs, baseline, strict=True):
        ca = a.get("final_chunks", {}).get(task)
        cb = b.get("final_chunks", {}).get(task)
        if not ca or not cb or [c[0] for c in ca] != [c[0] for c in cb]:
            return []
        pairs += [(na, ka, kb) for (na, ka), (_, kb) in zip(ca, cb, strict=True)]
    return pairs


def pooled_table(pooled: Mapping[str, Any]) -> Table:
    table = Table(title="adaptive vs isolated, final phases of all seeds pooled: "
                        "acceptance difference [95 % interval]")
    for col in ("task", "adaptive", "isolated", "Δ", "95 % interval", "paired 95 %",
                "vs the −2-point line"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, p in pooled.items():
        (k1, k2), (n1, n2) = p["accepted"], p["events"]
        lo, hi = p["ci95"]
        verdict = "within" if p["difference"] >= -0.02 else "beyond"
        if lo < -0.02 <= hi:  # the interval straddles the line: noise could put it either side
            verdict += " (not significant)"
        paired = p.get("paired_ci95")
        table.add_row(task, f"{k1}/{n1} {100 * k1 / n1:.1f}%", f"{k2}/{n2} {100 * k2 / n2:.1f}%",
                      f"{100 * p['difference']:+.1f}", f"[{100 * lo:+.1f}, {100 * hi:+.1f}]",
                      f"[{100 * paired[0]:+.1f}, {100 * paired[1]:+.1f}]" if paired else "-",
                      verdict)
    return table


def pooled_crosstalk(runs: list[Run], tasks: Collection[str]) -> dict[str, Any]:
    """Per task, crosstalk over all seeds' final phases pooled, with its 95 % Wilson interval
    (empty when a run was recorded without event counts).

    >>> pooled_crosstalk([{"events": {"a": 100}, "crosstalk": {"a": 0.01}},
    ...                   {"events": {"a": 50}, "crosstalk": {"a": 0.04}}], ["a"])
    {'a': {'leaked': 3, 'events': 150, 'rate': 0.02, 'ci95': [0.0068, 0.0571]}}
    """
    out: dict[str, Any] = {}
    for task in sorted(tasks):
        if any("events" not in r or task not in r["events"] for r in runs):
            return {}
        n = sum(r["events"][task] for r in runs)
        k = sum(round((r["crosstalk"].get(task) or 0.0) * r["events"][task]) for r in runs)
        if n == 0:
            continue
        lo, hi = wilson(k, n)
        out[task] = {"leaked": k, "events": n, "rate": round(k / n, 4),
                     "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def crosstalk_table(pooled: Mapping[str, Any], line: float = 0.02) -> Table:
    table = Table(title="adaptive's high-risk crosstalk, final phases of all seeds pooled "
                        "[95 % interval]")
    for col in ("task", "leaked", "rate", "95 % interval", f"vs the {100 * line:g} % line"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, p in pooled.items():
        lo, hi = p["ci95"]
        verdict = "within" if p["rate"] <= line else "beyond"
        if lo <= line < hi:  # the interval straddles the line: noise could put it either side
            verdict += " (not significant)"
        table.add_row(task, f"{p['leaked']}/{p['events']}", f"{100 * p['rate']:.2f}%",
                      f"[{100 * lo:.2f}, {100 * hi:.2f}]", verdict)
    return table
