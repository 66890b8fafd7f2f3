"""Steps per task: a shared adapter's acceptance vs one-task adapters, by training steps.

Trains, on the suite's seed data only (no feedback), one adapter per configuration from fresh
LoRA weights: the shared adapter of the suite's compatible tasks at several step counts, and
one-task adapters for the tasks measured. Each then answers ``--prompts`` fresh requests per
measured task with production's sampling, judged by the simulator's judge (acceptance and
crosstalk). Same prompts and sampling seed for every configuration.

This is the measurement behind ``TrainConfig.task_scaling``: with fixed steps a four-task
adapter sees each task a quarter as often as a one-task adapter and answers more requests in a
co-task's style.

    .venv/bin/python bench/task_steps.py                        # festive-zh, 100/200/400 steps
    .venv/bin/python bench/task_steps.py --shared greeting festival_wish --steps 100 200
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

from daemon.sim.judge import judge  # noqa: E402
from storage.suite import Suite, load_suite  # noqa: E402

FESTIVE_SHARED = ["festival_wish", "greeting", "praise", "thanks"]


def train_fresh(suite: Suite, artifacts: Path, tasks: list[str], steps: int,
                seed: int) -> tuple[Any, Any, Any, float]:
    """A fresh base copy with an adapter over ``tasks`` trained ``steps`` on seed data only:
    (bundle, train result with the model in eval mode, data, training seconds)."""
    from workers.training.base_model import load_base
    from workers.training.config import TrainConfig
    from workers.training.data import assemble
    from workers.training.sampler import default_ratios
    from workers.training.trainer import train_adapter

    bundle = load_base(suite, artifacts, device="cpu")  # a fresh copy: LoRA wraps it in place
    data = assemble(suite, tasks)
    cfg = TrainConfig(steps=steps, task_scaling=0.0, seed=seed, checkpoint_every=10**6)
    t0 = time.monotonic()
    result = train_adapter(bundle, data, ratios=default_ratios(data.sizes()), config=cfg,
                           general_share=suite.general_share)
    seconds = time.monotonic() - t0
    result.model.eval()
    return bundle, result, data, seconds


def answer(suite: Suite, model: Any, tokenizer: Any, task: str, prompts: list[str],
           seed: int) -> list[tuple[str, str, Any]]:
    """(prompt, output, verdict) for each prompt, sampled as production samples."""
    import torch

    from workers.training.generate import generate_batch

    with torch.no_grad():
        texts = generate_batch(model, tokenizer, task, prompts, max_new_tokens=40, seed=seed)
    return [(p, t, judge(suite, task, t)) for p, t in zip(prompts, texts, strict=True)]


def train_and_judge(suite: Suite, artifacts: Path, tasks: list[str], steps: int,
                    measured: list[str], prompts: int, seed: int) -> dict[str, Any]:
    """Train one adapter on ``tasks`` for ``steps`` and judge its answers on ``measured``."""
    bundle, result, _, seconds = train_fresh(suite, artifacts, tasks, steps, seed)
    out: dict[str, Any] = {"tasks": tasks, "steps": steps, "train_s": round(seconds, 1)}
    for task in measured:
        rng = random.Random(seed + 5)
        asks = [suite.prompt_for(task, rng) for _ in range(prompts)]
        verdicts = [v for _, _, v in answer(suite, result.model, bundle.tokenizer, task, asks,
                                            seed=seed + 3)]
        out[task] = {"acceptance": sum(v.accepted for v in verdicts) / prompts,
                     "crosstalk": sum(v.crosstalk_source is not None for v in verdicts) / prompts}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="builtin:festive-zh")
    ap.add_argument("--shared", nargs="+", default=FESTIVE_SHARED,
                    help="the shared adapter's tasks (default: festive-zh's cheerful four)")
    ap.add_argument("--measure", nargs="+", default=["greeting", "festival_wish"])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400],
                    help="shared adapter step counts (one-task adapters use the first)")
    ap.add_argument("--prompts", type=int, default=300, help="requests judged per task")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/task_steps.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: more threads mostly measure neighbours
    suite = load_suite(args.suite)
    unknown = [t for t in [*args.shared, *args.measure] if t not in suite.tasks]
    if unknown:
        sys.exit(f"error: not tasks of {suite.name}: {', '.join(unknown)}")
    console = Console()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(sorted(args.shared), s) for s in args.steps]
        plan += [([t], args.steps[0]) for t in args.measure]
        for tasks, steps in plan:
            measured = [t for t in args.measure if t in tasks]
            row = train_and_judge(suite, Path(tmp), tasks, steps, measured, args.prompts, args.seed)
            console.print(f"{'+'.join(tasks)} × {steps} steps: " + ", ".join(
                f"{t} {100 * row[t]['acceptance']:.1f} %" for t in measured))
            rows.append(row)
    table = Table(title=f"{suite.name}: acceptance / crosstalk of {args.prompts} sampled answers")
    table.add_column("adapter")
    table.add_column("steps", justify="right")
    table.add_column("steps per task", justify="right")
    for t in args.measure:
        table.add_column(t, justify="right")
    for row in rows:
        cells = [f"{100 * row[t]['acceptance']:.1f} % / {100 * row[t]['crosstalk']:.1f} %"
                 if t in row else "" for t in args.measure]
        name = "shared" if len(row["tasks"]) > 1 else row["tasks"][0]
        table.add_row(name, str(row["steps"]), f"{row['steps'] / len(row['tasks']):.0f}", *cells)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"suite": suite.name, "prompts": args.prompts,
                                    "seed": args.seed, "runs": rows}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
