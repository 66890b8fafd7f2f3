"""The final phase without its sampling noise: every version that served a task in a loop run's
final phase, judged on many requests and weighted by the requests it served.

``bench/loop.py`` judges a policy on its runs' final phase: 46-75 requests per cheerful task per
seed, so one answer moves a task's rate by about two points, and a miss of a few points can be
the versions' or the draw's. ``bench/final_versions.py`` takes the draw out but looks only at
the *last* version of each task. This bench keeps the phase's versions: it reads which version
answered each final-phase request (the feedback events' ``adapter`` field, in the run's
database), judges each such version on ``--requests`` fresh requests for the task (the same
requests and sampling seeds for every policy on a seed, sampled and judged as production and
the simulator do), and gives the task's expected final-phase acceptance: the versions' judged
rates weighted by the requests each one served. Its interval counts the judging's own noise
only; the weights are the run's.

    python bench/served_versions.py --workdir .adaptd/s34 --seeds 97 101 103 \\
        --tasks festival_wish greeting --out bench/results/served_versions-stop34.json
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/served_versions.py` from anywhere
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.final_versions import add_run_args, sampled_verdicts, suite_and_tasks  # noqa: E402
from storage.artifacts import version_dir  # noqa: E402
from storage.suite import Suite  # noqa: E402
from workers.training.config import EvalConfig  # noqa: E402


def final_phase_start(run_dir: Path) -> int:
    """The index of the final phase's first request, from the run's report."""
    report = run_dir / "report.json"
    if not report.is_file():
        raise SystemExit(f"error: {report} not found: run bench/loop.py with this --workdir "
                         "first, or pick the seeds and policies it ran")
    phases = json.loads(report.read_text("utf-8"))["phases"]
    return sum(int(p["events"]) for p in phases[:-1])


def event_index(event_id: str) -> int:
    """The simulator's request number in an event id (``sim_<seed>_<n>``).

    >>> event_index("sim_97_1812")
    1812
    """
    return int(event_id.rsplit("_", 1)[1])


def served_counts(run_dir: Path, start: int) -> dict[str, Counter[str]]:
    """Per task, how many final-phase requests (index >= ``start``) each version answered
    (``adapter@version``; ``base`` for a request no adapter answered)."""
    db = run_dir / "state" / "adaptd.db"
    if not db.is_file():
        raise SystemExit(f"error: {db} not found: this bench reads a loop run's SQLite database")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("select id, task, adapter from feedback_event").fetchall()
    counts: dict[str, Counter[str]] = {}
    for event_id, task, adapter in rows:
        if event_index(event_id) >= start:
            counts.setdefault(task, Counter())[adapter or "base"] += 1
    return counts


def weighted(versions: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Expected acceptance over the versions that served (weights: requests served) and the
    standard error of the judging (each version's rate as a binomial over its requests).

    >>> weighted({"a@1": {"served": 3, "accepted": 90, "n": 100},
    ...           "a@2": {"served": 1, "accepted": 50, "n": 100}})
    (0.8, 0.0257)
    """
    total = sum(v["served"] for v in versions.values())
    mean = sum(v["served"] * v["accepted"] / v["n"] for v in versions.values()) / total
    var = sum((v["served"] / total) ** 2 * (v["accepted"] / v["n"]) * (1 - v["accepted"] / v["n"])
              / v["n"] for v in versions.values())
    return round(mean, 4), round(math.sqrt(var), 4)


def judge_served(suite: Suite, run_dir: Path, tasks: Sequence[str], *, requests: int, seed: int,
                 ecfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Per task: each version that served it in the final phase, with the requests it served
    and its judged rate on ``requests`` fresh requests; and the weighted expectation."""
    from peft import PeftModel

    from workers.training.base_model import load_base

    counts = served_counts(run_dir, final_phase_start(run_dir))
    artifacts = run_dir / "state" / "artifacts"
    bundle = load_base(suite, artifacts)
    by_version: dict[str, list[str]] = {}  # a shared version is loaded once for all its tasks
    for task in tasks:
        for version in counts.get(task, {}):
            by_version.setdefault(version, []).append(task)
    judged: dict[str, dict[str, dict[str, Any]]] = {task: {} for task in tasks}
    for version, version_tasks in sorted(by_version.items()):
        if version == "base":
            model = bundle.model
        else:
            adapter, number = version.split("@")
            model = PeftModel.from_pretrained(bundle.model,
                                              str(version_dir(artifacts, adapter, int(number))))
        model.eval()
        for task in version_tasks:
            # The same requests for every version and policy on this seed.
            verdicts = sampled_verdicts(model, bundle.tokenizer, suite, task, requests=requests,
                                        seed=seed, stream="served-versions", ecfg=ecfg)
            judged[task][version] = {"served": counts[task][version], "n": len(verdicts),
                                     "accepted": sum(v.accepted for v in verdicts)}
        if version != "base":
            model.unload()  # the base again, for the next version
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if not judged[task]:
            continue
        mean, se = weighted(judged[task])
        out[task] = {"expected": mean, "se": se, "versions": judged[task]}
    return out


def pooled(runs: dict[int, dict[str, dict[str, Any]]], task: str) -> tuple[float, float]:
    """The seeds' expectations pooled, each seed weighted by its final-phase requests."""
    rows = [r[task] for r in runs.values() if task in r]
    served = [sum(v["served"] for v in row["versions"].values()) for row in rows]
    total = sum(served)
    mean = sum(s * row["expected"] for s, row in zip(served, rows, strict=True)) / total
    se = math.sqrt(sum((s / total * row["se"]) ** 2 for s, row in zip(served, rows, strict=True)))
    return mean, se


def table(results: dict[str, dict[int, dict[str, dict[str, Any]]]], tasks: Sequence[str],
          baseline: str) -> tuple[Table, dict[str, dict[str, Any]]]:
    t = Table(title=f"final phase, versions judged: expected acceptance (Δ vs {baseline} ± 1.96 se)")
    t.add_column("task")
    for policy in results:
        t.add_column(policy, justify="right")
    summary: dict[str, dict[str, Any]] = {p: {} for p in results}
    for task in tasks:
        cells = []
        base = pooled(results[baseline], task) if baseline in results else None
        for policy, runs in results.items():
            mean, se = pooled(runs, task)
            row: dict[str, Any] = {"expected": round(mean, 4), "se": round(se, 4)}
            cell = f"{100 * mean:.1f}%"
            if base is not None and policy != baseline:
                diff, dse = mean - base[0], math.hypot(se, base[1])
                row.update(difference=round(diff, 4), half_width=round(1.96 * dse, 4))
                cell += f"\nΔ {100 * diff:+.1f} ± {196 * dse:.1f}"
            summary[policy][task] = row
            cells.append(cell)
        t.add_row(task, *cells)
    return t, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, requests=500, out="served_versions.json")
    args = ap.parse_args()
    suite, tasks = suite_and_tasks(ap, args)
    console = Console() if sys.stdout.isatty() else Console(width=140)
    for seed in args.seeds:  # every run must be there before the judging starts
        for policy in args.policies:
            final_phase_start(args.workdir / f"{policy}-{seed}")
    ecfg = EvalConfig()
    t0 = time.monotonic()
    results: dict[str, dict[int, dict[str, dict[str, Any]]]] = {p: {} for p in args.policies}
    for seed in args.seeds:
        for policy in args.policies:
            run = judge_served(suite, args.workdir / f"{policy}-{seed}", tasks,
                               requests=args.requests, seed=seed, ecfg=ecfg)
            results[policy][seed] = run
            for task, r in run.items():
                console.print(f"{policy}, seed {seed}, {task}: {100 * r['expected']:.1f}% over "
                              + ", ".join(f"{v} ({d['served']} served, "
                                          f"{100 * d['accepted'] / d['n']:.1f}%)"
                                          for v, d in r["versions"].items()))
    baseline = "isolated" if "isolated" in results else args.policies[0]
    t, summary = table(results, tasks, baseline)
    console.print(t)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(sys.argv), "scenario": args.scenario, "seeds": args.seeds,
        "requests": args.requests, "baseline": baseline,
        "runs": {p: {str(s): r for s, r in by.items()} for p, by in results.items()},
        "pooled": summary, "seconds": round(time.monotonic() - t0, 1)}, indent=2,
        ensure_ascii=False))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
