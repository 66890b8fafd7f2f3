"""What each policy left serving: the final routed versions of loop runs, judged on many requests.

``bench/loop.py`` judges a policy on its runs' final phase: 46-75 requests per cheerful task
per seed, answered by whichever versions served during the phase (several shared versions on
a seed where the shared adapter retrained late). One answer moves such a rate by about two
points. This bench reads the runs that ``bench/loop.py`` left in its ``--workdir``
(``<policy>-<seed>/report.json``: the final routing table) and judges each task's *last*
served version on ``--requests`` fresh requests, sampled as production samples
(``EvalConfig``'s temperature, top-p and length) and judged as the simulator judges. Every
policy on a seed answers the very same requests with the same sampling seeds, so the per-task
difference is the versions', not the sample's.

    python -m bench.loop --seeds 79 83 89 --workdir .adaptd/loop
    python -m bench.final_versions --workdir .adaptd/loop --seeds 79 83 89

It measures the versions a run ends with, not the issue's goal (the final phase, which
includes the versions that served before them); the two answer different questions and
docs/benchmarks.md reports both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import common
from bench.loop_stats import rate_difference
from daemon.sim.judge import Verdict, judge
from daemon.sim.scenario import load_scenario
from storage.suite import Suite, SuiteError
from workers.training.audit import audit_requests
from workers.training.config import EvalConfig

POLICIES = ("adaptive", "isolated", "static", "uniform")


def served(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The final routing table of one loop run (task -> adapter, version, path)."""
    report = run_dir / "report.json"
    if not report.is_file():
        raise SystemExit(f"error: {report} not found: run `python -m bench.loop` with this --workdir "
                         "first, or pick the seeds and policies it ran")
    routing: dict[str, dict[str, Any]] = json.loads(report.read_text("utf-8"))["routing"]
    return routing


def sampled_verdicts(model: Any, tokenizer: Any, suite: Suite, task: str, *, requests: int,
                     seed: int, stream: str, ecfg: EvalConfig) -> list[Verdict]:
    """``model``'s answers to ``requests`` fresh requests for ``task`` (``stream``'s own, the
    same for every model on ``seed``), sampled as production samples (``ecfg``'s temperature,
    top-p and length) and judged as the simulator judges."""
    import torch

    from workers.training.generate import generate_batch

    asks = audit_requests(suite, task, samples=requests, seed=seed, stream=stream)
    with torch.no_grad():
        texts = generate_batch(model, tokenizer, task, asks, max_new_tokens=ecfg.max_new_tokens,
                               temperature=ecfg.temperature, top_p=ecfg.top_p, seed=seed,
                               batch_size=ecfg.batch_size)
    return [judge(suite, task, t) for t in texts]


def add_run_args(ap: argparse.ArgumentParser, *, requests: int) -> None:
    """Which loop runs, which tasks, how many requests, where the JSON goes."""
    ap.add_argument("--workdir", type=Path, required=True, help="bench/loop.py's --workdir")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--policies", nargs="+", default=["adaptive", "isolated"], choices=POLICIES)
    ap.add_argument("--scenario", default="builtin:holiday-zh")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: every task of the suite")
    ap.add_argument("--requests", type=int, default=requests, help="requests judged per task "
                    "and version")
    common.add_out(ap, "final_versions")


def suite_and_tasks(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Suite, list[str]]:
    """The scenario's suite and the tasks to judge; bad options are CLI errors."""
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    try:
        suite = load_scenario(args.scenario)[1]
    except SuiteError as exc:  # a missing or invalid scenario or suite file
        ap.error(str(exc))
    tasks: list[str] = args.tasks or sorted(suite.tasks)
    unknown = sorted(set(tasks) - set(suite.tasks))
    if unknown:
        ap.error(f"unknown task(s) {', '.join(unknown)}; the suite has {', '.join(sorted(suite.tasks))}")
    return suite, tasks


def judge_run(suite: Suite, run_dir: Path, tasks: Sequence[str], *, requests: int, seed: int,
              ecfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Per task: its served version, and how many of ``requests`` answers were accepted and
    whose style the crosstalk answers carried. A task without a route answers with the base."""
    from peft import PeftModel

    from workers.training.base_model import load_base

    routing = served(run_dir)
    bundle = load_base(suite, run_dir / "state" / "artifacts")
    out: dict[str, dict[str, Any]] = {}
    by_path: dict[str, list[str]] = {}  # a shared version is loaded once for all its tasks
    for task in tasks:
        by_path.setdefault(routing[task]["path"] if task in routing else "", []).append(task)
    for path, path_tasks in sorted(by_path.items()):
        model = PeftModel.from_pretrained(bundle.model, path) if path else bundle.model
        model.eval()
        for task in path_tasks:
            # The same requests for every policy on this seed, none the audits asked.
            verdicts = sampled_verdicts(model, bundle.tokenizer, suite, task, requests=requests,
                                        seed=seed, stream="final-versions", ecfg=ecfg)
            sources = Counter(v.crosstalk_source for v in verdicts if v.crosstalk_source)
            route = routing.get(task)
            out[task] = {"version": f"{route['adapter']}@{route['version']}" if route else "base",
                         "n": len(verdicts), "accepted": sum(v.accepted for v in verdicts),
                         "crosstalk_sources": dict(sources.most_common())}
        if path:
            model.unload()  # the base again, for the next version
    return out


def compare(results: dict[str, dict[int, dict[str, dict[str, Any]]]], tasks: Sequence[str],
            baseline: str = "isolated") -> dict[str, dict[str, Any]]:
    """Per policy and task, the seeds pooled: accepted/n and the difference from ``baseline``
    with Newcombe's 95 % interval (on the seeds both ran).

    >>> one = lambda k, n: {"t": {"accepted": k, "n": n}}
    >>> res = {"adaptive": {1: one(95, 100), 2: one(97, 100)},
    ...        "isolated": {1: one(99, 100), 2: one(99, 100), 3: one(50, 100)}}
    >>> row = compare(res, ["t"])["adaptive"]["t"]
    >>> row["accepted"], row["n"], row["difference"]
    (192, 200, -0.03)
    """
    rows: dict[str, dict[str, Any]] = {}
    base = results.get(baseline, {})
    for policy, by_seed in results.items():
        rows[policy] = {}
        for task in tasks:
            k = sum(r[task]["accepted"] for r in by_seed.values())
            n = sum(r[task]["n"] for r in by_seed.values())
            row: dict[str, Any] = {"accepted": k, "n": n, "acceptance": round(k / n, 4)}
            both = [s for s in by_seed if s in base]
            if policy != baseline and both:
                k1 = sum(by_seed[s][task]["accepted"] for s in both)
                n1 = sum(by_seed[s][task]["n"] for s in both)
                k2 = sum(base[s][task]["accepted"] for s in both)
                n2 = sum(base[s][task]["n"] for s in both)
                d, lo, hi = rate_difference(k1, n1, k2, n2)
                row.update(difference=round(d, 4), interval=[round(lo, 4), round(hi, 4)],
                           per_seed={s: round(by_seed[s][task]["accepted"] / by_seed[s][task]["n"]
                                              - base[s][task]["accepted"] / base[s][task]["n"], 4)
                                     for s in both})
            rows[policy][task] = row
    return rows


def table(rows: dict[str, dict[str, Any]], tasks: Sequence[str], baseline: str) -> Table:
    t = Table(title=f"final versions: acceptance, seeds pooled (Δ vs {baseline} [95 %])")
    t.add_column("task")
    for policy in rows:
        t.add_column(policy, justify="right")
    for task in tasks:
        cells = []
        for policy in rows:
            r = rows[policy][task]
            cell = f"{r['accepted']}/{r['n']} {100 * r['acceptance']:.1f}%"
            if "difference" in r:
                lo, hi = r["interval"]
                cell += f"\nΔ {100 * r['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            cells.append(cell)
        t.add_row(task, *cells)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, requests=1000)
    args = ap.parse_args()
    suite, tasks = suite_and_tasks(ap, args)
    console = Console() if sys.stdout.isatty() else Console(width=140)
    for seed in args.seeds:  # every run must be there before an hour of judging starts
        for policy in args.policies:
            served(args.workdir / f"{policy}-{seed}")
    ecfg = EvalConfig()
    t0 = time.monotonic()
    results: dict[str, dict[int, dict[str, dict[str, Any]]]] = {p: {} for p in args.policies}
    for seed in args.seeds:
        for policy in args.policies:
            run = judge_run(suite, args.workdir / f"{policy}-{seed}", tasks,
                            requests=args.requests, seed=seed, ecfg=ecfg)
            results[policy][seed] = run
            console.print(f"{policy}, seed {seed}: " + ", ".join(
                f"{t} {r['version']} {100 * r['accepted'] / r['n']:.1f}%" for t, r in run.items()))
    baseline = "isolated" if "isolated" in results else args.policies[0]
    rows = compare(results, tasks, baseline)
    console.print(table(rows, tasks, baseline))
    common.write_json(args.out, {
        "command": common.command("final_versions"), "workdir": str(args.workdir), "scenario": args.scenario,
        "seeds": args.seeds, "requests": args.requests, "baseline": baseline,
        "runs": {p: {str(s): r for s, r in by.items()} for p, by in results.items()},
        "pooled": rows, "seconds": round(time.monotonic() - t0, 1)})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
