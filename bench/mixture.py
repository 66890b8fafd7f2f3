"""Benchmark: does the mixture alone make a shared adapter leak, and does a rebalance undo it?

The engine's first answer to a leak in a shared adapter is to re-balance its mixture and
retrain, not to fork. That answer is right only if the mixture itself moves the leak. This
bench measures it at the trainer, without the loop's feedback: the scenario's suite, its
``shared`` adapter, the suite's seed data, and the simulation's trainer (``SIM_TRAIN``, ``SIM_EVAL`` and the
scenario's overrides, the self-audit included). Per seed, four versions:

    balanced    fresh LoRA weights, the base phase's traffic as ratios (with
                ``--warmup-runs N``, N more runs at those ratios: a mature adapter)
    control     balanced + one run at the same ratios (as much training, the same mix)
    skewed      balanced + one run at the surge phase's traffic as ratios (what
                data-proportional retraining converges to in a long surge)
    rebalanced  skewed + one run at the base ratios (the engine's rebalance)

Each version answers ``--requests`` fresh requests per task, sampled as production samples
(``EvalConfig``'s temperature, top-p and length) and judged as the simulator judges (ground
truth); every version of a seed answers the very same requests. The table gives each arm's
crosstalk on the high-risk tasks, seeds pooled, with Wilson 95 % intervals, and the two
differences that answer the question with Newcombe 95 % intervals: skewed − control (does the
surge's mix cause a leak?) and rebalanced − skewed (does the rebalance undo it?).

    python -m bench.mixture                       # holiday-en, seeds 0 1 2 (about 13 minutes)
    python -m bench.mixture --scenario builtin:holiday-zh --seeds 0
    python -m bench.mixture --warmup-runs 4       # the arms branch off a five-run adapter
    python -m bench.mixture --quick               # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench import common
from bench.final_versions import sampled_verdicts
from bench.loop_stats import rate_difference, wilson
from daemon.sim.scenario import Scenario, load_scenario
from storage.suite import Suite, SuiteError, validation_problems
from workers.training.config import TrainConfig

ARMS = ("balanced", "control", "skewed", "rebalanced")
# arm -> (the arm it continues from, which mix it trains on)
PLAN: dict[str, tuple[str | None, str]] = {
    "balanced": (None, "base"), "control": ("balanced", "base"),
    "skewed": ("balanced", "surge"), "rebalanced": ("skewed", "base"),
}


def phase_mix(scenario: Scenario, name: str | None, index: int, tasks: Sequence[str]) -> dict[str, float]:
    """A phase's traffic over the adapter's ``tasks`` as mixture ratios (summing to 1): the
    phase called ``name``, else the ``index``-th phase.

    >>> from daemon.sim.scenario import Phase
    >>> sc = Scenario(suite="s", phases=[Phase(name="a", events=1, traffic={"x": 3, "y": 1})])
    >>> phase_mix(sc, None, 0, ["x", "y"])
    {'x': 0.75, 'y': 0.25}
    """
    phases = {p.name: p for p in scenario.phases}
    if name is not None and name not in phases:
        raise SystemExit(f"error: no phase {name!r}; the scenario has {', '.join(phases)}")
    phase = phases[name] if name is not None else scenario.phases[min(index, len(phases) - 1)]
    weights = {t: phase.traffic.get(t, 0.0) for t in tasks}
    total = sum(weights.values())
    if total <= 0:
        raise SystemExit(f"error: phase {phase.name!r} sends no traffic to {', '.join(tasks)}")
    return {t: w / total for t, w in weights.items()}


def run_seed(suite: Suite, scenario: Scenario, mixes: Mapping[str, Mapping[str, float]], *,
             seed: int, requests: int, artifacts: Path, train: Mapping[str, Any],
             warmup: int = 0, log: Any) -> dict[str, Any]:
    """Train the four arms on ``seed`` and judge each on ``requests`` requests per task;
    ``balanced`` is trained ``1 + warmup`` times, each run from the last and audited as the
    loop audits every version."""
    from daemon.sim.run import SIM_EVAL, SIM_TRAIN
    from workers.training.audit import audit_adapter
    from workers.training.base_model import load_base
    from workers.training.config import EvalConfig
    from workers.training.data import assemble
    from workers.training.style import build_detector
    from workers.training.trainer import train_adapter

    tasks = sorted(suite.adapters["shared"])
    high = [t for t in tasks if suite.tasks[t].risk == "high"]
    bundle = load_base(suite, artifacts, device="auto")
    data = assemble(suite, tasks)
    cfg = TrainConfig(**{**SIM_TRAIN, **scenario.train, **train, "seed": seed}).for_tasks(len(tasks))
    audit_eval = EvalConfig(**{**SIM_EVAL, **scenario.eval})  # what the loop's audit uses
    ecfg = EvalConfig()  # production's sampling, as bench/final_versions.py judges
    detector = build_detector(suite)
    share = cfg.general_share_or(suite.general_share)
    saved: dict[str, Path] = {}
    out: dict[str, Any] = {}

    def park(model: Any, path: Path) -> Path:
        """Save the trained adapter to ``path`` and give the bundle its plain base back."""
        model.save_pretrained(str(path), selected_adapters=["default"], safe_serialization=True)
        bundle.model = model.unload()
        return path

    with tempfile.TemporaryDirectory(prefix="adaptd-mixture-") as scratch:
        for arm in ARMS:
            parent, mix = PLAN[arm]
            t0 = time.monotonic()
            ratios = mixes[mix]
            init = saved[parent] if parent else None
            runs = 1 + (warmup if arm == "balanced" else 0)
            for run in range(runs):
                result = train_adapter(bundle, data, ratios=ratios, config=cfg,
                                       general_share=share, init_adapter=init)
                model, _ = audit_adapter(bundle, result.model, data, suite=suite, ratios=ratios,
                                         config=cfg, general_share=share, detector=detector,
                                         ecfg=audit_eval)
                if run + 1 < runs:  # a warm-up run: the next one continues from it
                    init = park(model, Path(scratch) / f"warmup-{run + 1}")
            trained = time.monotonic() - t0
            model.eval()
            judged: dict[str, dict[str, int]] = {}
            for task in tasks:
                # The same requests and sampling seeds for every arm of this seed.
                verdicts = sampled_verdicts(model, bundle.tokenizer, suite, task,
                                            requests=requests, seed=seed, stream="mixture",
                                            ecfg=ecfg)
                judged[task] = {"n": len(verdicts), "accepted": sum(v.accepted for v in verdicts),
                                "crosstalk": sum(v.crosstalk_source is not None for v in verdicts)}
            saved[arm] = park(model, Path(scratch) / arm)
            out[arm] = {"tasks": judged, "runs": runs, "train_seconds": round(trained, 1),
                        "seconds": round(time.monotonic() - t0, 1)}
            k = sum(judged[t]["crosstalk"] for t in high)
            n = sum(judged[t]["n"] for t in high)
            log(f"seed {seed} {arm:<10} high-risk crosstalk {k}/{n} "
                f"({100 * k / max(n, 1):.1f} %) in {out[arm]['seconds']:.0f} s")
    return out


def pooled(runs: Mapping[int, Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per arm: crosstalk on ``tasks``, seeds pooled, with its Wilson interval; and the
    differences skewed − control and rebalanced − skewed with Newcombe intervals.

    >>> arm = lambda k: {"tasks": {"t": {"n": 100, "crosstalk": k, "accepted": 100 - k}}}
    >>> runs = {0: {"balanced": arm(9), "control": arm(5), "skewed": arm(15), "rebalanced": arm(6)}}
    >>> p = pooled(runs, ["t"])
    >>> p["arms"]["skewed"]["crosstalk"], p["skew_effect"]["difference"], p["rebalance_effect"]["difference"]
    (15, 0.1, -0.09)
    """
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        k = sum(r[arm]["tasks"][t]["crosstalk"] for r in runs.values() for t in tasks)
        n = sum(r[arm]["tasks"][t]["n"] for r in runs.values() for t in tasks)
        lo, hi = wilson(k, n)
        arms[arm] = {"crosstalk": k, "n": n, "rate": round(k / n, 4),
                     "interval": [round(lo, 4), round(hi, 4)]}

    def diff(a: str, b: str) -> dict[str, Any]:
        d, lo, hi = rate_difference(arms[a]["crosstalk"], arms[a]["n"],
                                    arms[b]["crosstalk"], arms[b]["n"])
        return {"difference": round(d, 4), "interval": [round(lo, 4), round(hi, 4)]}

    return {"tasks": list(tasks), "arms": arms, "skew_effect": diff("skewed", "control"),
            "rebalance_effect": diff("rebalanced", "skewed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="builtin:holiday-en")
    ap.add_argument("--base-phase", default=None, help="phase whose traffic is the balanced mix "
                    "(default: the first)")
    ap.add_argument("--surge-phase", default=None, help="phase whose traffic is the skewed mix "
                    "(default: the second)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--requests", type=int, default=200, help="requests judged per task and arm")
    ap.add_argument("--warmup-runs", type=int, default=0, metavar="N",
                    help="N more runs at the base mix in `balanced` before the arms branch: the "
                         "skew then meets a mature adapter, as in a loop that has retrained "
                         "several times before a surge (default: 0, fresh weights)")
    ap.add_argument("--artifacts", type=Path, default=common.OUT_DIR / "mixture-artifacts",
                    help="where the base model is built and cached")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TrainConfig overrides over the simulation's (VALUE in JSON), e.g. "
                         "steps=20 or 'audit={\"rounds\": 0}'")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one seed, 16 requests, a few steps per version")
    common.add_out(ap, "mixture")
    args = ap.parse_args()
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    if args.warmup_runs < 0:
        ap.error("--warmup-runs must be 0 or more")
    train = common.key_values("--train", args.train, known=None, want="a JSON value")
    if args.quick:
        args.seeds, args.requests = args.seeds[:1], min(args.requests, 16)
        train = {"steps": 5, "affinity_measurements": 0,
                 "audit": {"rounds": 1, "samples": 8, "steps": 2}, **train}
    try:
        TrainConfig.model_validate(train)
    except ValidationError as exc:
        ap.error(f"--train: {validation_problems(exc)}")
    try:
        scenario, suite, _ = load_scenario(args.scenario)
    except SuiteError as exc:
        ap.error(str(exc))
    if "shared" not in suite.adapters or len(suite.adapters["shared"]) < 2:
        ap.error(f"suite {suite.name!r} has no shared adapter of two or more tasks")
    tasks = sorted(suite.adapters["shared"])
    mixes = {"base": phase_mix(scenario, args.base_phase, 0, tasks),
             "surge": phase_mix(scenario, args.surge_phase, 1, tasks)}
    high = [t for t in tasks if suite.tasks[t].risk == "high"]
    if not high:
        ap.error(f"the shared adapter of {suite.name!r} has no high-risk task to watch")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    t0 = time.monotonic()
    runs = {seed: run_seed(suite, scenario, mixes, seed=seed, requests=args.requests,
                           artifacts=args.artifacts, train=train, warmup=args.warmup_runs,
                           log=log)
            for seed in args.seeds}
    result = pooled(runs, high)
    common.write_json(args.out, {
        "command": common.command("mixture"), "machine": common.machine(),
        "scenario": args.scenario, "seeds": args.seeds, "requests": args.requests,
        "warmup_runs": args.warmup_runs,
        "train_overrides": train,
        "mixes": {k: {t: round(w, 4) for t, w in v.items()} for k, v in mixes.items()},
        "pooled": result, "runs": {str(s): r for s, r in runs.items()},
        "seconds": round(time.monotonic() - t0, 1)})
    rows: list[list[Any]] = []
    for arm in ARMS:
        a = result["arms"][arm]
        lo, hi = a["interval"]
        rows.append([arm, f"{a['crosstalk']}/{a['n']}", f"{100 * a['rate']:.1f} %",
                     f"[{100 * lo:.1f}, {100 * hi:.1f}]"])
    for name, key in (("skewed − control", "skew_effect"), ("rebalanced − skewed", "rebalance_effect")):
        e = result[key]
        lo, hi = e["interval"]
        rows.append([name, "", f"{100 * e['difference']:+.1f} pts",
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"])
    mature = f", balanced after {1 + args.warmup_runs} runs" if args.warmup_runs else ""
    common.print_table(f"high-risk crosstalk ({', '.join(high)}), seeds {args.seeds} pooled"
                       f"{mature}",
                       ["arm", "answers", "crosstalk", "95 %"], rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
