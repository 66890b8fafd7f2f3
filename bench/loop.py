"""The holiday scenario under all four policies, same seeds, one table.

    python -m bench.loop                       # holiday-zh, seeds 7 11 13, all policies
    python -m bench.loop --seeds 7 --quick     # one seed, the short smoke scenario
    python -m bench.loop --policies adaptive --runs-from bench/results/loop.json
                                               # re-run adaptive only, compare with the
                                               # earlier static/uniform/isolated runs
    python -m bench.loop --gather A.json B.json --out C.json
                                               # one table from runs of other seeds

Goals (issue "Close the loop"): for adaptive, final-phase crosstalk <= 2% on every high-risk
task, acceptance on every task within 2 points of isolated, fewer adapters than tasks,
compatible tasks still sharing; static must show the problem (high-risk crosstalk >= 3x
adaptive's), and where static never lets a high-risk task leak (<= 2 % in every phase of every
seed) adaptive must fork nothing. Prints mean and spread over seeds; writes one JSON
(``--out``). Rates are the judge's over every answer served (the report's ``truth``),
whatever share of them users rated.

Each goal on rates is judged twice: on every seed alone, and on the seeds' final phases
pooled per task (``bench/loop_stats.py``: crosstalk with a Wilson interval, adaptive vs
isolated with Newcombe's interval and, since every policy on a seed answers the very same
requests, a paired interval). A final phase holds 50-150 events per task, so one answer moves
a rate by about one point: the per-seed verdicts sit at the scenario's resolution, and the
pooled ones with their intervals tell a miss from noise. Policies are compared only on the
seeds both ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from bench import common
from bench.loop_stats import (
    crosstalk_table,
    paired_by_seed,
    pooled_crosstalk,
    pooled_table,
    pooled_vs,
)
from daemon.settings import Settings
from daemon.sim.run import POLICIES, SIM_POLICY, run_simulation
from daemon.sim.scenario import load_scenario


def final_phase(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task, the final phase judged on every answer served (``truth``); with a feedback
    model the rated answers are a thin, noisy sample of those, and a report without one rated
    every answer.

    >>> rated = {"events": 2, "crosstalk_rate": 0.0, "truth": {"events": 40, "crosstalk_rate": 0.05}}
    >>> final_phase({"phases": [{"tasks": {"a": rated, "b": {"events": 9}}}]})
    {'a': {'events': 40, 'crosstalk_rate': 0.05}, 'b': {'events': 9}}
    >>> rated_share({"phases": [{"tasks": {"a": rated, "b": {"events": 10}}}]})
    0.24
    """
    return {t: row.get("truth", row) for t, row in report["phases"][-1]["tasks"].items()}


def summarize(report: dict[str, Any], risk: Mapping[str, str]) -> dict[str, Any]:
    last = final_phase(report)
    by_phase = worst_high_risk_by_phase(report, risk)
    return {
        "high_risk_crosstalk": by_phase[report["phases"][-1]["name"]],
        "high_risk_crosstalk_by_phase": by_phase,
        "acceptance": {t: r["acceptance"] for t, r in last.items()},
        "events": {t: r["events"] for t, r in last.items()},
        "crosstalk": {t: r["crosstalk_rate"] for t, r in last.items()},
        "crosstalk_sources": {t: r.get("crosstalk_sources", {}) for t, r in last.items()},
        "sharing": {name: a["tasks"] for name, a in report["adapters"].items()},
        "mean_acceptance": statistics.mean(r["acceptance"] for r in last.values()),
        "adapters": len(report["adapters"]),
        "forks": sum(d["action"] == "fork" for d in report["decisions"]),
        "merges": sum(d["action"] == "merge" for d in report["decisions"]),
        "merged_back": merged_back(report),
        "training_runs": len(report["training_runs"]),
        "seconds": report["seconds"],
        "final_chunks": final_chunks(report),
        "rated_share": rated_share(report),
    }


def worst_high_risk_by_phase(report: dict[str, Any], risk: Mapping[str, str]) -> dict[str, float]:
    """Per phase, the worst high-risk task's crosstalk on every answer served: whether a
    policy ever let a high-risk task leak, not only at the end.

    >>> row = lambda rate: {"truth": {"events": 50, "crosstalk_rate": rate}}
    >>> worst_high_risk_by_phase({"phases": [
    ...     {"name": "steady", "tasks": {"h": row(0.01), "g": row(0.3)}},
    ...     {"name": "surge", "tasks": {"g": row(0.2)}}]}, {"h": "high", "g": "low"})
    {'steady': 0.01, 'surge': 0.0}
    """
    out: dict[str, float] = {}
    for phase in report["phases"]:
        rows = {t: row.get("truth", row) for t, row in phase["tasks"].items()}
        out[phase["name"]] = max((rows[t]["crosstalk_rate"] or 0.0 for t in rows
                                  if risk.get(t) == "high"), default=0.0)
    return out


def merged_back(report: dict[str, Any]) -> list[str]:
    """The tasks a merge moved back that the run ends serving from the adapter they merged
    into: a merged version the gate rejected, or a later fork, leaves a task out.

    >>> merge = {"action": "merge", "task": "a", "adapter": "shared", "status": "applied"}
    >>> merged_back({"decisions": [merge], "adapters": {"shared": {"tasks": ["a", "b"]}}})
    ['a']
    >>> merged_back({"decisions": [merge],
    ...              "adapters": {"shared": {"tasks": ["b"]}, "a": {"tasks": ["a"]}}})
    []
    """
    ends = {t: name for name, a in report["adapters"].items() for t in a["tasks"]}
    return sorted({d["task"] for d in report["decisions"] if d["action"] == "merge"
                   and d.get("status") == "applied" and ends.get(d["task"]) == d["adapter"]})


def rated_share(report: dict[str, Any]) -> float:
    """Rated answers over answers served in the final phase (1.0 without a feedback model)."""
    rows = report["phases"][-1]["tasks"].values()
    served = sum(r.get("truth", r)["events"] for r in rows)
    return round(sum(r["events"] for r in rows) / served, 4) if served else 0.0


def final_chunks(report: dict[str, Any]) -> dict[str, list[list[int]]]:
    """Per task, ``[events, accepted]`` of each chunk of the final phase, in order. Every
    policy on a seed answers the very same requests (``daemon/sim/app.py``), so two runs'
    chunks pair up request for request (``paired_difference``)."""
    name = report["phases"][-1]["name"]
    out: dict[str, list[list[int]]] = {}
    for chunk in report.get("series", []):
        if chunk["phase"] != name:
            continue
        for task, row in chunk.get("truth", chunk["tasks"]).items():
            out.setdefault(task, []).append([row["events"], round(row["acceptance"] * row["events"])])
    return out


def _checked(flag: str, items: list[str], model: type[BaseModel], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE in JSON) naming fields of ``model``, validated against it
    before any run starts: a typo stops the bench, not an hour of runs later."""
    values = common.key_values(flag, items, known=model.model_fields,
                               want=f"{what} and a JSON value "
                                    f"(fields: {', '.join(model.model_fields)})")
    try:
        model.model_validate(values)
    except ValidationError as exc:
        raise SystemExit(f"error: {flag}: {exc}") from None
    return values


def parse_train(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` TrainConfig overrides (VALUE in JSON), checked against TrainConfig here so
    a typo stops the bench before an hour of runs, not inside the first training job.

    >>> parse_train(["unlikelihood_weight=1.0", "steps=80"])
    {'unlikelihood_weight': 1.0, 'steps': 80}
    """
    from workers.training.config import TrainConfig

    return _checked("--train", items, TrainConfig, "a TrainConfig field")


def parse_feedback(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of the scenario's ``feedback:`` block (VALUE in JSON), checked
    against FeedbackSpec before any run starts.

    >>> parse_feedback(["post_unrated=false", "rated=0.2"])
    {'post_unrated': False, 'rated': 0.2}
    """
    from daemon.sim.feedback import FeedbackSpec

    return _checked("--feedback", items, FeedbackSpec, "a feedback field")


def parse_policy(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` PolicyConfig overrides (VALUE in JSON; ``risk`` and ``ratios`` take partial
    dicts), checked against PolicyConfig before any run starts.

    >>> parse_policy(['risk={"low": {"crosstalk_on": 0.05, "crosstalk_off": 0.025}}'])
    {'risk': {'low': {'crosstalk_on': 0.05, 'crosstalk_off': 0.025}}}
    """
    from policies.config import PolicyConfig

    policy = common.key_values("--policy", items, known=None, want="a JSON value")
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


# What a results file records of the settings its runs were made with; one table compares
# runs of one setting, so a gathered file keeps them (and refuses files that differ).
OVERRIDES = ("train_overrides", "policy_overrides", "feedback_overrides")


def gather(paths: list[Path], scenario: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The runs of earlier results files of ``scenario``, each tagged with its seed, per
    policy in seed order, and the overrides they all ran with. A policy need not have run on
    every seed; a (policy, seed) found in two files must be the same run (e.g. a file
    regathered with ``--reuse``)."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    settings: dict[str, Any] | None = None
    for path in paths:
        try:
            data = json.loads(path.read_text("utf-8"))
            seeds, policies = data["seeds"], data["policies"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"error: --gather {path}: not a bench/loop.py results file ({exc})") from None
        if data.get("scenario") != scenario:
            raise SystemExit(f"error: --gather {path}: scenario {data.get('scenario')!r}, "
                             f"not {scenario!r} (pass --scenario)")
        these = {k: data.get(k, {}) for k in OVERRIDES}
        if settings is not None and these != settings:
            differ = ", ".join(f"{k} {these[k]} against {settings[k]}"
                               for k in OVERRIDES if these[k] != settings[k])
            raise SystemExit(f"error: --gather {path}: ran with other settings than the files "
                             f"before it ({differ}); one table compares runs of one setting")
        settings = these
        for policy, row in policies.items():
            # a gathered file's policies carry their own seeds (not every policy ran every seed)
            for seed, run in zip(row.get("seeds", seeds), row["runs"], strict=True):
                run = {**run, "seed": seed}
                earlier = found.setdefault(policy, {}).setdefault(seed, run)
                if earlier != run:
                    raise SystemExit(f"error: --gather: {policy} on seed {seed} differs between "
                                     f"files; keep one of them")
    runs = {p: [by_seed[s] for s in sorted(by_seed)] for p, by_seed in found.items()}
    return runs, settings or {}


def compare(runs: dict[str, list[dict[str, Any]]], risk: Mapping[str, str],
            console: Console) -> tuple[dict[str, Any], dict[str, Any]]:
    """Print the tables; return (per-policy rows, goals). Runs carry their seed, and every
    comparison between two policies uses only the seeds both ran."""
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    table = Table(title=f"seeds {seeds} (final phase; mean ± spread)")
    for col in ("policy", "seeds", "high-risk crosstalk", "mean acceptance",
                "min Δacc vs isolated", "adapters", "forks", "merges", "runs", "seconds"):
        table.add_column(col, justify="left" if col == "policy" else "right")

    def ms(values: list[float], pct: bool = True) -> str:
        m = statistics.mean(values)
        spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
        return f"{100 * m:.1f}% ± {100 * spread:.1f}" if pct else f"{m:.1f} ± {spread:.1f}"

    rows: dict[str, Any] = {}
    for policy, rs in runs.items():
        gaps: list[float] = []
        if "isolated" in runs and policy != "isolated":
            for r, iso in zip(*paired_by_seed(rs, runs["isolated"]), strict=True):
                # rounded to 4 places as pooled_vs's differences are: 0.96 - 0.98 is
                # -0.0200...02 in floats, and exactly 2 points is within 2 points
                gaps.append(round(min(r["acceptance"][t] - iso["acceptance"].get(t, 0.0)
                                      for t in r["acceptance"]), 4))
        rows[policy] = {"seeds": [r["seed"] for r in rs], "runs": rs,
                        "min_acceptance_gap_vs_isolated": gaps}
        table.add_row(policy, " ".join(str(r["seed"]) for r in rs),
                      ms([r["high_risk_crosstalk"] for r in rs]),
                      ms([r["mean_acceptance"] for r in rs]), ms(gaps) if gaps else "-",
                      ms([float(r["adapters"]) for r in rs], pct=False),
                      ms([float(r["forks"]) for r in rs], pct=False),
                      ms([float(r["merges"]) for r in rs], pct=False)
                      if all("merges" in r for r in rs) else "-",
                      ms([float(r["training_runs"]) for r in rs], pct=False),
                      ms([float(r["seconds"]) for r in rs], pct=False))
    console.print(table)
    console.print(per_task_table(runs))
    goals: dict[str, Any] = {}
    if "adaptive" not in runs:
        return rows, goals
    ad = runs["adaptive"]
    high = [t for t, r in risk.items() if r == "high"]
    goals["adaptive_high_risk_crosstalk_le_2pct"] = all(r["high_risk_crosstalk"] <= 0.02 for r in ad)
    leaks = pooled_crosstalk(ad, high)
    if leaks:  # the same goal on the seeds' pooled final phases
        console.print(crosstalk_table(leaks))
        rows["adaptive"]["pooled_high_risk_crosstalk"] = leaks
        goals["adaptive_high_risk_crosstalk_le_2pct_pooled"] = all(
            p["rate"] <= 0.02 for p in leaks.values())
    goals["adaptive_fewer_adapters_than_tasks"] = all(r["adapters"] < len(risk) for r in ad)
    goals["adaptive_tasks_still_share"] = all(  # some adapter serves two tasks or more
        any(len(tasks) >= 2 for tasks in r["sharing"].values()) for r in ad)
    if rows["adaptive"]["min_acceptance_gap_vs_isolated"]:
        goals["adaptive_within_2pts_of_isolated"] = all(
            g >= -0.02 for g in rows["adaptive"]["min_acceptance_gap_vs_isolated"])
        pooled = pooled_vs(*paired_by_seed(ad, runs["isolated"]))
        if pooled:  # the same goal on the seeds' pooled final phases (their mean)
            console.print(pooled_table(pooled))
            rows["adaptive"]["pooled_vs_isolated"] = pooled
            goals["adaptive_within_2pts_of_isolated_pooled"] = all(
                p["difference"] >= -0.02 for p in pooled.values())
    if "static" in runs:
        a_runs, s_runs = paired_by_seed(ad, runs["static"])
        if s_runs:
            a = statistics.mean(r["high_risk_crosstalk"] for r in a_runs)
            s = statistics.mean(r["high_risk_crosstalk"] for r in s_runs)
            goals["static_shows_problem_3x"] = s >= 3 * max(a, 1e-9) and s > 0
            goals["static_over_adaptive_high_risk"] = round(s / a, 1) if a > 0 else None
            # "No fork that buys nothing": where static never lets a high-risk task leak in
            # any phase of any seed, adaptive forks nothing either (judged only there).
            if all("high_risk_crosstalk_by_phase" in r for r in s_runs):
                never = all(v <= 0.02 for r in s_runs
                            for v in r["high_risk_crosstalk_by_phase"].values())
                goals["static_never_lets_high_risk_leak"] = never
                if never:
                    goals["adaptive_no_fork_where_static_never_leaks"] = all(
                        r["forks"] == 0 for r in a_runs)
    console.print(goals)
    return rows, goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="builtin:holiday-zh")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--quick", action="store_true", help="the smoke scenario, one seed")
    common.add_out(ap, "loop")
    ap.add_argument("--workdir", type=Path, default=Path(".adaptd/bench-loop"))
    ap.add_argument("--reuse", action="store_true",
                    help="reuse reports already in --workdir instead of re-running them")
    ap.add_argument("--gather", type=Path, nargs="+", default=None, metavar="RESULTS",
                    help="run nothing: one table from earlier results files of the scenario "
                         "(e.g. runs of other seeds); --seeds and --policies are ignored")
    ap.add_argument("--min-new", type=int, default=SIM_POLICY["min_new_examples"],
                    help="new examples that trigger a retrain (all policies; default: the "
                         "simulation's, as in `adaptd demo`)")
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
    ap.add_argument("--feedback", action="append", default=[], metavar="KEY=VALUE",
                    help="a field of the scenario's feedback block for every run, VALUE in JSON "
                         "(repeatable), e.g. --feedback post_unrated=false: the same table "
                         "without unrated answers posted")
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
    train = parse_train(args.train)
    policy_cli = parse_policy(args.policy)
    feedback = parse_feedback(args.feedback)
    t0 = time.monotonic()
    if args.gather:  # runs of several machines and settings: the files record those
        runs, settings = gather(args.gather, args.scenario)
        about: dict[str, Any] = {"gathered_from": [str(p) for p in args.gather], **settings}
    else:
        where = common.machine()
        runs = run_all(args, risk, console, train=train, policy_cli=policy_cli,
                       feedback=feedback, where=where)
        about = {"machine": where, "train_overrides": train, "policy_overrides": policy_cli,
                 "feedback_overrides": feedback}
    rows, goals = compare(runs, risk, console)
    out = {"scenario": args.scenario, "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
           **about, "policies": rows, "goals": goals, "seconds": round(time.monotonic() - t0, 1)}
    common.write_json(args.out, out)
    console.print(f"wrote {args.out}")


def run_all(args: argparse.Namespace, risk: Mapping[str, str], console: Console, *,
            train: dict[str, Any], policy_cli: dict[str, Any], feedback: dict[str, Any],
            where: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Run (or, with ``--reuse``, read back) every policy on every seed: per policy, each
    run's summary with its seed."""
    settings = Settings()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies}
    policy_overrides = {"min_new_examples": args.min_new, **policy_cli}
    if args.task_scaling is not None:
        train["task_scaling"] = args.task_scaling
    load = where["loadavg_at_start"][0]
    if load >= 0.5 * where["cpus"]:
        # The engine runs on an event clock in a synchronous simulation: load changes how
        # long the runs take, not what they decide.
        console.print(f"[yellow]note: load average {load} on {where['cpus']} cores: the "
                      f"runs' seconds will not compare with an idle machine's[/]")
    for seed in args.seeds:
        for policy in args.policies:
            console.rule(f"{policy}, seed {seed}")
            work = args.workdir / f"{policy}-{seed}"
            if args.reuse and (work / "report.json").is_file():
                report = json.loads((work / "report.json").read_text("utf-8"))
            else:
                report = run_simulation(settings, args.scenario, policy=policy, seed=seed,
                                        report_path=work / "report.json", workdir=work / "state",
                                        console=console, base_cache=args.workdir / "base-cache",
                                        policy_overrides=policy_overrides,
                                        train_overrides=train, feedback_overrides=feedback)
            runs[policy].append({"seed": seed, **summarize(report, risk)})
    if args.runs_from is not None:
        earlier = json.loads(args.runs_from.read_text("utf-8"))
        if earlier["seeds"] != args.seeds:
            raise SystemExit(f"{args.runs_from} has seeds {earlier['seeds']}, not {args.seeds}")
        for policy in POLICIES:
            if policy not in runs and policy in earlier["policies"]:
                runs[policy] = [{**r, "seed": s, "runs_from": str(args.runs_from)}
                                for s, r in zip(earlier["seeds"], earlier["policies"][policy]["runs"],
                                                strict=True)]
    return runs


if __name__ == "__main__":
    main()
