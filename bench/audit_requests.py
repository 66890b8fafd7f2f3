"""Where the self-audit's requests come from, for a task of a file suite: leaks found by source.

A file suite has no prompt generators, so the audit (``workers/training/audit.py``) cannot
ask fresh requests the way it does on festive-zh. It asks the requests the task is known to
get: its seed prompts and the prompts of its users' feedback in the data. This bench shows
what that buys. festive-zh's seed data is written out as a file suite (JSONL, no generators);
a one-task adapter of each measured task trains on it (what a fork serves first); then three
audits of the same size and seed count the leaking answers (another task's style, the
evaluation's own test) on:

1. the seed prompts alone (what the audit asks before any feedback, and what it asked for
   file suites before the feedback prompts were added);
2. the seed prompts and ``--users`` requests of one round of real traffic (festive-zh's
   generators standing in for the app's users) — the pool once feedback has arrived;
3. fresh requests from festive-zh's generators (what a generator suite's audit asks).

    .venv/bin/python bench/audit_requests.py --seeds 1 2 3 --base-cache .adaptd/fork-base
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from storage.suite import Suite, TaskSpec, load_suite  # noqa: E402

SOURCES = ("seed prompts", "seeds + users'", "fresh (generators)")


def as_file_suite(suite: Suite, root: Path) -> Suite:
    """``suite``'s tasks with their seed data written to JSONL: no prompt generators."""
    tasks = {}
    for name, spec in suite.tasks.items():
        rows = [json.dumps({"prompt": e.prompt, "response": e.response}, ensure_ascii=False)
                for e in suite.seed_examples(name)]
        (root / f"{name}.jsonl").write_text("\n".join(rows) + "\n", "utf-8")
        tasks[name] = TaskSpec(risk=spec.risk, tone=spec.tone, data=f"{name}.jsonl",
                               markers=spec.markers, forbid=spec.forbid)
    return Suite(name=f"{suite.name}-files", base_model=suite.base_model, tasks=tasks,
                 base_dir=root, general=suite.general, slots=suite.slots,
                 general_share=suite.general_share)


def measure(suite: Suite, files: Suite, task: str, seed: int, args: argparse.Namespace,
            base_dir: Path) -> dict[str, Any]:
    from daemon.sim.run import SIM_EVAL
    from workers.training.audit import find_leaks
    from workers.training.base_model import load_base
    from workers.training.config import EvalConfig, TrainConfig
    from workers.training.data import assemble
    from workers.training.sampler import default_ratios
    from workers.training.style import build_detector
    from workers.training.trainer import train_adapter

    bundle = load_base(suite, base_dir, device="cpu")
    data = assemble(files, [task])
    cfg = TrainConfig(steps=args.steps, seed=seed, checkpoint_every=10**6)
    model = train_adapter(bundle, data, ratios=default_ratios(data.sizes()), config=cfg,
                          general_share=files.general_share).model
    model.eval()
    users_rng = random.Random(seed + 11)
    users = [suite.prompt_for(task, users_rng) for _ in range(args.users)]
    seeds = [s.prompt for s in data.tasks[task].train]
    held = {s.prompt for s in data.tasks[task].heldout}
    ecfg, detector = EvalConfig(**SIM_EVAL), build_detector(files)
    row: dict[str, Any] = {"seed": seed, "task": task}
    for source, ask_suite, known in ((SOURCES[0], files, seeds), (SOURCES[1], files, seeds + users),
                                     (SOURCES[2], suite, [])):
        leaks = find_leaks(model, bundle.tokenizer, ask_suite, task, samples=args.samples,
                           seed=seed * 1000 + 1, detector=detector, ecfg=ecfg, skip=held,
                           known=known)
        row[source] = len(leaks)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="builtin:festive-zh", help="a suite with generators")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: the high-risk tasks")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--samples", type=int, default=256, help="requests per audit")
    ap.add_argument("--users", type=int, default=120, help="users' requests in the pool")
    ap.add_argument("--steps", type=int, default=100, help="training steps of the adapter")
    ap.add_argument("--base-cache", type=Path, default=None,
                    help="where the builtin base is built/cached (default: a temporary dir)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/audit_requests.json")
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)  # a shared 2-core machine: more threads mostly measure neighbours
    hf_logging.disable_progress_bar()
    suite = load_suite(args.suite)
    tasks = args.tasks or [t for t, s in suite.tasks.items() if s.risk == "high"]
    unknown = [t for t in tasks if t not in suite.tasks]
    if not tasks or unknown:
        sys.exit(f"error: no such task in {suite.name}: {', '.join(unknown) or '(no high-risk)'}")
    if not all(suite.tasks[t].prompts for t in tasks):
        sys.exit(f"error: {suite.name} needs prompt generators for {', '.join(tasks)}")
    console = Console()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = as_file_suite(suite, Path(tmp))
        for seed in args.seeds:
            for task in tasks:
                rows.append(measure(suite, files, task, seed, args, args.base_cache or Path(tmp)))
                console.print(json.dumps(rows[-1], ensure_ascii=False))
    table = Table(title=f"leaking answers of {args.samples} audit requests, by source "
                        f"(one-task adapter on {files.name}, seeds {args.seeds})")
    table.add_column("task")
    for source in SOURCES:
        table.add_column(source, justify="right")
    means: dict[str, dict[str, float]] = {}
    for task in tasks:
        mine = [r for r in rows if r["task"] == task]
        means[task] = {s: sum(r[s] for r in mine) / len(mine) for s in SOURCES}
        table.add_row(task, *[f"{means[task][s]:.1f} ({', '.join(str(r[s]) for r in mine)})"
                              for s in SOURCES])
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "suite": suite.name, "mean_leaks": means, "rows": rows,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "base_cache")}},
        indent=1, ensure_ascii=False))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
