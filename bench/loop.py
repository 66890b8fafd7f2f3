"""The holiday scenario under all four policies, same seeds, one table.

    python bench/loop.py                       # holiday-zh, seeds 7 11 13, all policies
    python bench/loop.py --seeds 7 --quick     # one seed, the short smoke scenario
    python bench/loop.py --policies adaptive --runs-from bench/results/loop.json
                                               # re-run adaptive only, compare with the
                                               # earlier static/uniform/isolated runs

Goals (issue "Close the loop"): for adaptive, final-phase crosstalk <= 2% on every high-risk
task, acceptance on every task within 2 points of isolated, fewer adapters than tasks,
compatible tasks still sharing; static must show the problem (high-risk crosstalk >= 3x
adaptive's). Prints mean and spread over seeds; writes bench/results/loop.json.

A final phase holds 50-150 events per task, so one answer moves a task's acceptance by about
one point and the per-seed goals sit at the scenario's resolution. The second table pools the
seeds' final phases per task (adaptive vs isolated) and gives each difference a 95 %
confidence interval (Newcombe's hybrid score interval), so a miss can be told from noise.
Since every policy on a seed answers the very same requests, the table also gives a paired
interval (``paired_difference``, from the final phase's chunks of 50 requests), which counts
only the answers the two policies judged differently.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from daemon.settings import Settings
from daemon.sim.run import POLICIES, run_simulation
from daemon.sim.scenario import load_scenario
from policies.signals import wilson_lower


def final_phase(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(report["phases"][-1]["tasks"])


def summarize(report: dict[str, Any], risk: Mapping[str, str]) -> dict[str, Any]:
    last = final_phase(report)
    high = [t for t, r in risk.items() if r == "high" and t in last]
    return {
        "high_risk_crosstalk": max((last[t]["crosstalk_rate"] or 0.0) for t in high) if high else 0.0,
        "acceptance": {t: r["acceptance"] for t, r in last.items()},
        "events": {t: r["events"] for t, r in last.items()},
        "crosstalk": {t: r["crosstalk_rate"] for t, r in last.items()},
        "crosstalk_sources": {t: r.get("crosstalk_sources", {}) for t, r in last.items()},
        "sharing": {name: a["tasks"] for name, a in report["adapters"].items()},
        "mean_acceptance": statistics.mean(r["acceptance"] for r in last.values()),
        "adapters": len(report["adapters"]),
        "forks": sum(d["action"] == "fork" for d in report["decisions"]),
        "training_runs": len(report["training_runs"]),
        "seconds": report["seconds"],
        "final_chunks": final_chunks(report),
    }


def final_chunks(report: dict[str, Any]) -> dict[str, list[list[int]]]:
    """Per task, ``[events, accepted]`` of each chunk of the final phase, in order. Every
    policy on a seed answers the very same requests (``daemon/sim/app.py``), so two runs'
    chunks pair up request for request (``paired_difference``)."""
    name = report["phases"][-1]["name"]
    out: dict[str, list[list[int]]] = {}
    for chunk in report.get("series", []):
        if chunk["phase"] != name:
            continue
        for task, row in chunk["tasks"].items():
            out.setdefault(task, []).append([row["events"], round(row["acceptance"] * row["events"])])
    return out


def _key_values(flag: str, items: list[str], *, known: Collection[str] | None,
                want: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE in JSON) as a dict; a clear CLI error for anything else.

    >>> _key_values("--x", ["a=1", "b={\\"c\\": 2}"], known=None, want="a JSON value")
    {'a': 1, 'b': {'c': 2}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep or (known is not None and key not in known):
            raise SystemExit(f"error: {flag} {item!r}: want KEY=VALUE with {want}")
    return out


def parse_train(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` TrainConfig overrides (VALUE in JSON), checked against TrainConfig here so
    a typo stops the bench before an hour of runs, not inside the first training job.

    >>> parse_train(["unlikelihood_weight=1.0", "steps=80"])
    {'unlikelihood_weight': 1.0, 'steps': 80}
    """
    from pydantic import ValidationError

    from workers.training.config import TrainConfig

    train = _key_values("--train", items, known=TrainConfig.model_fields,
                        want=f"a TrainConfig field and a JSON value "
                             f"(fields: {', '.join(TrainConfig.model_fields)})")
    try:
        TrainConfig.model_validate(train)
    except ValidationError as exc:
        raise SystemExit(f"error: --train: {exc}") from None
    return train


def parse_policy(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` PolicyConfig overrides (VALUE in JSON; ``risk`` and ``ratios`` take partial
    dicts), checked against PolicyConfig before any run starts.

    >>> parse_policy(['risk={"low": {"crosstalk_on": 0.05, "crosstalk_off": 0.025}}'])
    {'risk': {'low': {'crosstalk_on': 0.05, 'crosstalk_off': 0.025}}}
    """
    from policies.config import PolicyConfig

    policy = _key_values("--policy", items, known=None, want="a JSON value")
    try:
        PolicyConfig.from_dict(policy)
    except (TypeError, ValueError, AttributeError) as exc:
        raise SystemExit(f"error: --policy: {exc}") from None
    return policy


def per_task_table(runs: dict[str, list[dict[str, Any]]]) -> Table:
    """Final phase per task and policy: mean acceptance / crosstalk over the seeds."""
    table = Table(title="final phase per task: acceptance / crosstalk (mean over seeds)")
    table.add_column("task")
    for policy in runs:
        table.add_column(policy, justify="right")
    tasks = sorted({t for rs in runs.values() for r in rs for t in r["acceptance"]})
    for task in tasks:
        cells = []
        for rs in runs.values():
            acc = [r["acceptance"][task] for r in rs if task in r["acceptance"]]
            xt = [r["crosstalk"][task] or 0.0 for r in rs if task in r.get("crosstalk", {})]
            cells.append(f"{100 * statistics.mean(acc):.1f}% / {100 * statistics.mean(xt):.1f}%"
                         if acc and xt else "-")
        table.add_row(task, *cells)
    return table


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="builtin:holiday-zh")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--quick", action="store_true", help="the smoke scenario, one seed")
    ap.add_argument("--out", type=Path, default=Path("bench/results/loop.json"))
    ap.add_argument("--workdir", type=Path, default=Path(".adaptd/bench-loop"))
    ap.add_argument("--reuse", action="store_true",
                    help="reuse reports already in --workdir instead of re-running them")
    ap.add_argument("--min-new", type=int, default=300,
                    help="new examples that trigger a retrain (all policies)")
    ap.add_argument("--task-scaling", type=float, default=None, metavar="X",
                    help="TrainConfig.task_scaling for every run (default: the trainer's, 0 = "
                         "fixed steps; 1 trains an n-task adapter n times the steps)")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig override for every run, VALUE in JSON (repeatable), "
                         "e.g. --train unlikelihood_weight=1.0")
    ap.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                    help="a PolicyConfig override for every run (read by the engine, so it "
                         "matters to adaptive), VALUE in JSON (repeatable), e.g. "
                         "--policy 'risk={\"low\": {\"crosstalk_on\": 0.05}}'")
    ap.add_argument("--runs-from", type=Path, default=None, metavar="RESULTS",
                    help="take the policies not re-run here from an earlier results file of the "
                         "same scenario and seeds (e.g. static/isolated, which do not use the "
                         "policy engine, when only the engine changed)")
    args = ap.parse_args()
    if args.quick:
        args.scenario, args.seeds = "builtin:smoke", args.seeds[:1]
    console = Console() if sys.stdout.isatty() else Console(width=140)  # logs: no wrapping
    _, suite, _ = load_scenario(args.scenario)
    risk = {t: spec.risk for t, spec in suite.tasks.items()}
    settings = Settings()
    train = parse_train(args.train)
    policy_cli = parse_policy(args.policy)
    policy_overrides = {"min_new_examples": args.min_new, **policy_cli}
    if args.task_scaling is not None:
        train["task_scaling"] = args.task_scaling
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies}
    where = common.machine()
    load = where["loadavg_at_start"][0]
    if load >= 0.5 * where["cpus"]:
        # Since the engine runs on an event clock in a synchronous simulation, load changes
        # how long the runs take, not what they decide (README, The demo and the simulator).
        console.print(f"[yellow]note: load average {load} on {where['cpus']} cores: the "
                      f"runs' seconds will not compare with an idle machine's[/]")
    t0 = time.monotonic()
    for seed in args.seeds:
        for policy in args.policies:
            console.rule(f"{policy}, seed {seed}")
            work = args.workdir / f"{policy}-{seed}"
            if args.reuse and (work / "report.json").is_file():
                report = json.loads((work / "report.json").read_text("utf-8"))
                runs[policy].append(summarize(report, risk))
                continue
            report = run_simulation(settings, args.scenario, policy=policy, seed=seed,
                                    report_path=work / "report.json", workdir=work / "state",
                                    console=console, base_cache=args.workdir / "base-cache",
                                    policy_overrides=policy_overrides,
                                    train_overrides=train)
            runs[policy].append(summarize(report, risk))
    reused: set[str] = set()
    if args.runs_from is not None:
        earlier = json.loads(args.runs_from.read_text("utf-8"))
        if earlier["seeds"] != args.seeds:
            raise SystemExit(f"{args.runs_from} has seeds {earlier['seeds']}, not {args.seeds}")
        for policy in POLICIES:
            if policy not in runs and policy in earlier["policies"]:
                runs[policy] = earlier["policies"][policy]["runs"]
                reused.add(policy)
    table = Table(title=f"{args.scenario}, seeds {args.seeds} (final phase; mean ± spread)")
    for col in ("policy", "high-risk crosstalk", "mean acceptance", "min Δacc vs isolated",
                "adapters", "forks", "runs", "seconds"):
        table.add_column(col, justify="left" if col == "policy" else "right")

    def ms(values: list[float], pct: bool = True) -> str:
        m = statistics.mean(values)
        spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
        return f"{100 * m:.1f}% ± {100 * spread:.1f}" if pct else f"{m:.1f} ± {spread:.1f}"

    rows: dict[str, Any] = {}
    for policy, rs in runs.items():
        gaps: list[float] = []
        if "isolated" in runs and policy != "isolated":
            for r, iso in zip(rs, runs["isolated"], strict=True):
                gaps.append(min(r["acceptance"][t] - iso["acceptance"].get(t, 0.0)
                                for t in r["acceptance"]))
        rows[policy] = {"runs": rs, "min_acceptance_gap_vs_isolated": gaps}
        if policy in reused:
            rows[policy]["runs_from"] = str(args.runs_from)
        label = policy + (" (earlier run)" if policy in reused else "")
        table.add_row(label, ms([r["high_risk_crosstalk"] for r in rs]),
                      ms([r["mean_acceptance"] for r in rs]), ms(gaps) if gaps else "-",
                      ms([float(r["adapters"]) for r in rs], pct=False),
                      ms([float(r["forks"]) for r in rs], pct=False),
                      ms([float(r["training_runs"]) for r in rs], pct=False),
                      ms([float(r["seconds"]) for r in rs], pct=False))
    console.print(table)
    console.print(per_task_table(runs))
    pooled = pooled_vs(runs["adaptive"], runs["isolated"]) if {"adaptive", "isolated"} <= set(runs) else {}
    if pooled:
        console.print(pooled_table(pooled))
        rows["adaptive"]["pooled_vs_isolated"] = pooled
    goals: dict[str, Any] = {}
    if "adaptive" in runs:
        ad = runs["adaptive"]
        goals["adaptive_high_risk_crosstalk_le_2pct"] = all(r["high_risk_crosstalk"] <= 0.02 for r in ad)
        goals["adaptive_fewer_adapters_than_tasks"] = all(r["adapters"] < len(risk) for r in ad)
        if rows["adaptive"]["min_acceptance_gap_vs_isolated"]:
            goals["adaptive_within_2pts_of_isolated"] = all(
                g >= -0.02 for g in rows["adaptive"]["min_acceptance_gap_vs_isolated"])
        if pooled:  # the same goal on the seeds' pooled final phases (their mean)
            goals["adaptive_within_2pts_of_isolated_pooled"] = all(
                p["difference"] >= -0.02 for p in pooled.values())
        if "static" in runs:
            a = statistics.mean(r["high_risk_crosstalk"] for r in ad)
            s = statistics.mean(r["high_risk_crosstalk"] for r in runs["static"])
            goals["static_shows_problem_3x"] = s >= 3 * max(a, 1e-9) and s > 0
    console.print(goals)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scenario": args.scenario, "seeds": args.seeds,
                                    "machine": where,
                                    "train_overrides": train,
                                    "policy_overrides": policy_cli,
                                    "policies": rows, "goals": goals,
                                    "seconds": round(time.monotonic() - t0, 1)}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
