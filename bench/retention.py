"""General-ability retention by training steps: the loss the retention gate watches.

Trains, on a suite's seed data only, one adapter over all its tasks from fresh LoRA weights per
step count, and measures the mean token loss on the held-out general split (what the gate
compares, limit ``GateConfig.general_loss_tolerance``) next to the base model's. With
``task_scaling: 1`` a seven-task suite trains 7 × the one-task steps, so this is the question
of whether scaled steps still pass the gate.

    .venv/bin/python bench/retention.py                                   # both builtin suites
    .venv/bin/python bench/retention.py --suites builtin:office-en --steps 100 700 1400
    .venv/bin/python bench/retention.py --general-share 0.3 0.5 --tiny hidden_size=256 ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.task_steps import parse_tiny, train_fresh, use_tiny  # noqa: E402
from storage.suite import Suite, load_suite  # noqa: E402
from workers.training.config import GateConfig  # noqa: E402


def measure(suite: Suite, artifacts: Path, steps: int, seed: int,
            general_share: float | None = None) -> dict[str, Any]:
    """Base and adapter general loss (held-out split) for an all-task adapter of ``steps``
    trained with ``general_share`` of general data (None: the suite's own share)."""
    from workers.training.evaluate import mean_loss
    from workers.training.sampler import GENERAL

    tasks = sorted(suite.tasks)
    share = suite.general_share if general_share is None else general_share
    bundle, result, data, seconds = train_fresh(suite, artifacts, tasks, steps, seed,
                                                train={"general_share": share})
    held = data.general_heldout
    after = mean_loss(result.model, bundle.tokenizer, held, GENERAL)
    with result.model.disable_adapter():  # the same weights without LoRA: the base model
        base = mean_loss(result.model, bundle.tokenizer, held, GENERAL)
    if base is None or after is None:
        sys.exit(f"error: {suite.name} has no held-out general data to measure retention on "
                 f"(give the suite a `general` section or `general_data` file)")
    return {"suite": suite.name, "tasks": len(tasks), "steps": steps, "general_share": share,
            "heldout": len(held),
            "base_loss": round(base, 4), "adapter_loss": round(after, 4),
            "rise": round(after / base - 1, 4), "train_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", nargs="+", default=["builtin:festive-zh", "builtin:office-en"])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 400, 700])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--general-share", type=float, nargs="+", default=[None], metavar="SHARE",
                    help="share of general data in each adapter's training draws (default: each "
                         "suite's own general_share); several values are measured side by side")
    ap.add_argument("--tiny", action="append", default=[], metavar="KEY=VALUE",
                    help="build builtin:tiny with this recipe change (repeatable), e.g. --tiny "
                         "hidden_size=256 (a base of another size, built once per run)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/retention.json")
    args = ap.parse_args()
    for share in args.general_share:
        if share is not None and not 0.0 <= share < 1.0:
            ap.error(f"--general-share {share}: want a share in [0, 1)")
    tiny = parse_tiny(args.tiny)
    use_tiny(tiny)
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: more threads mostly measure neighbours
    limit = GateConfig().general_loss_tolerance
    console = Console()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for ref in args.suites:
            suite = load_suite(ref)
            for steps, share in itertools.product(args.steps, args.general_share):
                row = measure(suite, Path(tmp), steps, args.seed, share)
                console.print(f"{suite.name} × {steps} steps, general share "
                              f"{row['general_share']}: general loss "
                              f"{row['base_loss']:.3f} → {row['adapter_loss']:.3f}")
                rows.append(row)
    table = Table(title=f"general loss on the held-out general split (gate limit +{100 * limit:.0f} %)")
    for col in ("suite", "tasks", "steps", "general", "base", "adapter", "rise", "gate"):
        table.add_column(col, justify="left" if col == "suite" else "right")
    for r in rows:
        table.add_row(r["suite"], str(r["tasks"]), str(r["steps"]), f"{r['general_share']:.2f}",
                      f"{r['base_loss']:.3f}", f"{r['adapter_loss']:.3f}", f"{100 * r['rise']:+.1f} %",
                      "pass" if r["rise"] <= limit else "FAIL")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "limit": limit, "tiny": tiny,
                                         "runs": rows}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
