"""Benchmark: a training job's evaluation at several generation batch sizes.

Every training job evaluates its candidate and the production it would replace by sampling
``prompts_per_task × samples_per_prompt`` answers per task (16 × 4 = 64 by default) from each
(``workers.training.evaluate.evaluate_model``), so evaluation is a fixed share of every job.
On a small model on a CPU, generation is bound by per-step overhead more than by arithmetic:
fewer, wider ``generate`` calls do the same work in less time. This bench trains one
all-task adapter of the builtin suite on its seed data (400 steps), then times
``evaluate_model`` over all tasks at each batch size, alternating sizes, and reports the
medians and the ratio to the first size. The answers' quality and crosstalk rate are
printed too: a batch size changes which random numbers each answer draws, not what is
measured, so they should differ only by sampling noise. That the wider batches' extra left
padding changes nothing is checked directly: greedy answers to the same prompts must be
identical at every size (column ``greedy same``).

    .venv/bin/python bench/eval_batch.py [--sizes 16 64] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SUITE, machine, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a shared 2-core machine: more mostly measures "
                             "the neighbours)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the adapter")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/adaptd-eval-batch"))
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.threads < 1 or min(args.sizes) < 1:
        parser.error("--repeats, --steps, --threads and every --sizes must be >= 1")

    import torch
    from task_steps import train_fresh

    from storage.suite import load_suite
    from workers.training.config import EvalConfig
    from workers.training.evaluate import evaluate_model
    from workers.training.generate import generate_batch

    torch.set_num_threads(args.threads)
    suite = load_suite(SUITE)
    tasks = sorted(suite.tasks)
    bundle, result, data, _ = train_fresh(suite, args.workdir / "artifacts", tasks, args.steps,
                                          seed=1)
    seconds: dict[int, list[float]] = {b: [] for b in args.sizes}
    readings: dict[int, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for size in args.sizes:
            cfg = EvalConfig(batch_size=size)
            t0 = time.perf_counter()
            out = evaluate_model(result.model, bundle.tokenizer, data, suite, tasks=tasks,
                                 detector=None, cfg=cfg)
            seconds[size].append(time.perf_counter() - t0)
            per = out["tasks"].values()
            readings[size] = {  # the same seed every repeat: the same answers
                "answers": sum(r["n"] for r in per),
                "quality": statistics.mean(r["quality"] for r in per),
                "crosstalk_rate": statistics.mean(r["crosstalk_rate"] for r in per),
            }
    first = args.sizes[0]
    greedy = {size: [out for task in tasks for out in generate_batch(
        result.model, bundle.tokenizer, task, [x.prompt for x in data.tasks[task].heldout[:16]],
        do_sample=False, batch_size=size)] for size in args.sizes}
    for size in args.sizes:
        readings[size]["greedy_same"] = sum(
            a == b for a, b in zip(greedy[size], greedy[first], strict=True))
        readings[size]["greedy_answers"] = len(greedy[first])
    med = {b: statistics.median(v) for b, v in seconds.items()}
    rows = [[str(b), med[b], min(seconds[b]), max(seconds[b]), med[b] / med[first],
             readings[b]["answers"], readings[b]["quality"], readings[b]["crosstalk_rate"],
             f"{readings[b]['greedy_same']}/{readings[b]['greedy_answers']}"]
            for b in args.sizes]
    print_table(f"evaluate_model over {len(tasks)} tasks ({SUITE}), seconds",
                ["batch size", "median", "min", "max", f"vs {first}", "answers", "quality",
                 "crosstalk", "greedy same"], rows)
    path = write_json("eval_batch.json", {
        "machine": machine(), "suite": SUITE, "tasks": tasks, "steps": args.steps,
        "threads": args.threads, "repeats": args.repeats, "seconds": seconds,
        "median": med, "ratio_vs_first": {b: med[b] / med[first] for b in args.sizes},
        "readings": readings,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
