"""A forked high-risk adapter through rounds of feedback: live crosstalk by training settings.

The loop's remaining miss is a forked one-task adapter of a high-risk task that keeps answering
a few percent of ambiguous requests in a cheerful co-task's style, through several targeted
retrains. This bench replays that cycle offline, without the daemon, so training settings can
be compared side by side in minutes instead of 40-minute loop runs:

1. train a one-task adapter on the suite's seed data (what a fork serves first), continued
   from a shared parent trained with a skewed mixture (``--parent-traffic``: by default
   festive-zh's holiday traffic, the mixture the fork leaves) or, with ``init="fresh"``,
   from fresh LoRA weights;
2. each round: the adapter answers ``--traffic`` fresh requests with production's sampling, the
   simulator's judge labels them as the app's users would (accepted outputs become training
   examples; rejected ones negatives, ``--edit-share`` of them also a correction, as in
   ``daemon.sim.app``), and the adapter is retrained from its own weights on seed data plus all
   feedback so far (a targeted retrain); each training ends with the job's self-audit
   (``TrainConfig.audit``, ``workers/training/audit.py``) unless the variant turns it off;
3. after every round, ``--eval-prompts`` fixed requests measure acceptance and crosstalk.

Every variant sees the same prompts and sampling seeds. Variants are TrainConfig overrides
(``data.<field>`` for DataConfig, ``init="fresh"`` to fork from fresh weights):

    .venv/bin/python bench/fork_retrain.py      # audit off/on, and parent init; 3 seeds
    .venv/bin/python bench/fork_retrain.py --seeds 1 --variant ul1:unlikelihood_weight=1.0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.task_steps import answer  # noqa: E402
from storage.suite import Suite, load_suite  # noqa: E402

# A fresh fork (the daemon's init) without and with the self-audit (``TrainConfig.audit``,
# on by default), and the fork continued from its parent's weights as the daemon did before.
DEFAULT_VARIANTS = ['no_audit:init="fresh",audit={"rounds":0}', 'audit:init="fresh"',
                    'parent_no_audit:audit={"rounds":0}']
HOLIDAY = ["greeting=0.5", "festival_wish=0.35", "thanks=0.04", "praise=0.03", "apology=0.04",
           "complaint_reply=0.04"]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, TrainConfig overrides); each value is JSON, so
    it may hold commas of its own.

    >>> parse_variant('a:init="fresh",audit={"rounds":3,"samples":64}')
    ('a', {'init': 'fresh', 'audit': {'rounds': 3, 'samples': 64}})
    """
    name, _, body = text.partition(":")
    overrides: dict[str, Any] = {}
    decoder, at = json.JSONDecoder(), 0
    while at < len(body):
        key, eq, _ = body[at:].partition("=")
        if not eq:
            raise ValueError(f"variant {text!r}: expected key=value at {body[at:]!r}")
        value, end = decoder.raw_decode(body, at + len(key) + 1)
        overrides[key.strip()] = value
        if end < len(body) and body[end] != ",":
            raise ValueError(f"variant {text!r}: expected ',' after {key.strip()}")
        at = end + 1
    return name, overrides


def train_parent(suite: Suite, args: argparse.Namespace, workdir: Path, base_dir: Path) -> Path:
    """A shared adapter over every task, trained on seed data with the mixture skewed as
    ``--parent-traffic`` says (a holiday-skewed shared adapter); the fork continues from it,
    as the daemon's fork does (``init: parent``)."""
    from workers.training.base_model import load_base
    from workers.training.config import TrainConfig
    from workers.training.data import assemble
    from workers.training.trainer import train_adapter

    path = workdir / "parent"
    if path.exists():
        return path
    ratios = {k: float(v) for k, v in (p.split("=") for p in args.parent_traffic)}
    tasks = sorted(suite.tasks)
    cfg = TrainConfig(steps=args.parent_steps, seed=args.seed, checkpoint_every=10**6)
    data = assemble(suite, tasks)
    result = train_adapter(load_base(suite, base_dir, device="cpu"), data,
                           ratios={t: ratios.get(t, 0.0) for t in tasks},
                           config=cfg.for_tasks(len(tasks)), general_share=suite.general_share)
    result.model.save_pretrained(str(path))
    return path


def run_variant(suite: Suite, task: str, overrides: dict[str, Any], args: argparse.Namespace,
                workdir: Path, base_dir: Path) -> list[dict[str, Any]]:
    from daemon.sim.run import SIM_EVAL
    from workers.training.audit import audit_adapter
    from workers.training.base_model import load_base
    from workers.training.config import DataConfig, EvalConfig, TrainConfig
    from workers.training.data import Sample, assemble
    from workers.training.sampler import default_ratios
    from workers.training.style import build_detector
    from workers.training.trainer import train_adapter

    overrides = dict(overrides)
    fresh = overrides.pop("init", None) == "fresh"  # not a TrainConfig field: the fork's init
    data_cfg = DataConfig.model_validate({k.removeprefix("data."): overrides.pop(k)
                                          for k in list(overrides) if k.startswith("data.")})
    cfg = TrainConfig.model_validate({"steps": 100, "seed": args.seed, "checkpoint_every": 10**6,
                                      **overrides})
    detector, ecfg = build_detector(suite), EvalConfig(**SIM_EVAL)
    eval_rng = random.Random(args.seed + 5)
    eval_prompts = [suite.prompt_for(task, eval_rng) for _ in range(args.eval_prompts)]
    corrections = suite.seed_examples(task, seed=args.seed + 1)
    feedback_rng = random.Random(args.seed + 11)
    positives: list[Sample] = []
    negatives: list[Sample] = []
    rows: list[dict[str, Any]] = []
    init = (train_parent(suite, args, workdir.parent, base_dir)
            if args.parent_traffic and not fresh else None)
    for rnd in range(args.rounds + 1):
        # Train: fresh at round 0, then continued from the served weights with all feedback.
        bundle = load_base(suite, base_dir, device="cpu")  # fresh copy
        data = assemble(suite, [task], cfg=data_cfg)
        data.tasks[task].train.extend(positives)
        data.tasks[task].negatives.extend(negatives)
        t0 = time.monotonic()
        round_cfg = cfg.model_copy(update={"seed": args.seed + rnd})
        ratios = default_ratios(data.sizes())
        general_share = cfg.general_share_or(suite.general_share)
        result = train_adapter(bundle, data, ratios=ratios, config=round_cfg,
                               general_share=general_share, init_adapter=init)
        # The job's self-audit (``TrainConfig.audit``; a variant turns it off with
        # ``audit={"rounds":0}``), with the simulation's eval settings.
        model, audit = audit_adapter(bundle, result.model, data, suite=suite, ratios=ratios,
                                     config=round_cfg, general_share=general_share,
                                     detector=detector, ecfg=ecfg)
        seconds = time.monotonic() - t0
        model.eval()
        init = workdir / f"round{rnd}"
        model.save_pretrained(str(init))
        # Measure on the fixed requests.
        judged = answer(suite, model, bundle.tokenizer, task, eval_prompts, seed=args.seed + 3)
        n = len(judged)
        row = {"round": rnd, "train_s": round(seconds, 1),
               "acceptance": sum(v.accepted for _, _, v in judged) / n,
               "crosstalk": sum(v.crosstalk_source is not None for _, _, v in judged) / n,
               "positives": len(positives), "negatives": len(negatives),
               "audit_leaks": [sum(r["leaks"].values()) for r in audit]}
        rows.append(row)
        # Live traffic of this round: the users' verdicts become the next round's feedback.
        asks = [suite.prompt_for(task, feedback_rng) for _ in range(args.traffic)]
        for prompt, output, verdict in answer(suite, model, bundle.tokenizer, task, asks,
                                              seed=feedback_rng.randrange(2**31)):
            if verdict.accepted:
                positives.append(Sample(task, prompt, output, "accepted"))
                continue
            negatives.append(Sample(task, prompt, output, "negative"))
            if feedback_rng.random() < args.edit_share:
                fix = feedback_rng.choice(corrections).response
                positives.append(Sample(task, prompt, fix, "correction"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="builtin:festive-zh")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: the high-risk tasks")
    ap.add_argument("--variant", action="append", default=None,
                    help="name:key=value,... TrainConfig overrides (repeatable)")
    ap.add_argument("--rounds", type=int, default=3, help="feedback + retrain rounds")
    ap.add_argument("--traffic", type=int, default=120, help="live requests per round")
    ap.add_argument("--eval-prompts", type=int, default=400)
    ap.add_argument("--parent-traffic", nargs="+", default=HOLIDAY, metavar="TASK=SHARE",
                    help="the parent's mixture (default: festive-zh's holiday traffic); "
                         "'none': no parent, every variant starts fresh")
    ap.add_argument("--parent-steps", type=int, default=100, help="per task (task_scaling 1)")
    ap.add_argument("--edit-share", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--base-cache", type=Path, default=None,
                    help="where the builtin base is built/cached (default: a temporary dir)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/fork_retrain.json")
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)  # a shared 2-core machine: more threads mostly measure neighbours
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per round otherwise
    if args.parent_traffic == ["none"]:
        args.parent_traffic = None
    suite = load_suite(args.suite)
    tasks = args.tasks or [t for t, s in suite.tasks.items() if s.risk == "high"]
    unknown = [t for t in tasks if t not in suite.tasks]
    if not tasks or unknown:
        sys.exit(f"error: no such task in {suite.name}: {', '.join(unknown) or '(no high-risk)'}")
    console = Console()
    try:
        variants = [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
    except ValueError as exc:  # json's errors are ValueErrors too
        ap.error(str(exc))
    # results[task][variant][seed] = rows by round
    results: dict[str, dict[str, dict[str, Any]]] = {t: {n: {} for n, _ in variants}
                                                     for t in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            args.seed = seed
            for task in tasks:
                for name, overrides in variants:
                    rows = run_variant(suite, task, overrides, args,
                                       Path(tmp) / str(seed) / task / name,
                                       args.base_cache or Path(tmp))
                    results[task][name][str(seed)] = rows
                    console.print(f"seed {seed} {task} {name}: crosstalk by round " + " → ".join(
                        f"{100 * r['crosstalk']:.1f} %" for r in rows))
    table = Table(title=f"{suite.name}: crosstalk of {args.eval_prompts} sampled answers after "
                        f"each round, mean over seeds {args.seeds}")
    table.add_column("task")
    table.add_column("variant")
    for rnd in range(args.rounds + 1):
        table.add_column(f"round {rnd}", justify="right")
    means: dict[str, dict[str, list[float]]] = {}
    for task, by_variant in results.items():
        for name, by_seed in by_variant.items():
            mean = [sum(rows[r]["crosstalk"] for rows in by_seed.values()) / len(by_seed)
                    for r in range(args.rounds + 1)]
            means.setdefault(task, {})[name] = mean
            table.add_row(task, name, *[f"{100 * m:.1f} %" for m in mean])
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "suite": suite.name, "variants": dict(variants), "mean_crosstalk": means,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "variant", "base_cache")},
        "runs": results}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
