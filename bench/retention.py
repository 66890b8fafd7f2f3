"""General-ability retention by training steps: the loss the retention gate watches.

Trains, on a suite's seed data only, one adapter over all its tasks from fresh LoRA weights per
step count, and measures the mean token loss on the held-out general split (what the gate
compares, limit ``GateConfig.general_loss_tolerance``) next to the base model's. With
``task_scaling: 1`` a seven-task suite trains 7 × the one-task steps, so this is the question
of whether scaled steps still pass the gate.

    python -m bench.retention                                   # both builtin suites
    python -m bench.retention --quick                           # festive-zh, 20 steps (smoke)
    python -m bench.retention --suites builtin:office-en --steps 100 700 1400
    python -m bench.retention --general-share 0.3 0.5 --tiny hidden_size=256 ...
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import common
from storage.suite import Suite, load_suite
from workers.training.config import GateConfig


def train_fresh(suite: Suite, artifacts: Path, tasks: list[str], steps: int,
                seed: int, train: dict[str, Any] | None = None) -> tuple[Any, Any, Any, float]:
    """A fresh base copy with an adapter over ``tasks`` trained ``steps`` on seed data, on the
    temperature prior over data sizes (as a job without a policy): (bundle, train result with
    the model in eval mode, data, training seconds)."""
    from workers.training.base_model import load_base
    from workers.training.config import TrainConfig
    from workers.training.data import assemble
    from workers.training.sampler import default_ratios
    from workers.training.trainer import train_adapter

    bundle = load_base(suite, artifacts, device="cpu")  # a fresh copy: LoRA wraps it in place
    data = assemble(suite, tasks)
    cfg = TrainConfig.model_validate({"seed": seed, "checkpoint_every": 10**6, **(train or {}),
                                      "steps": steps, "task_scaling": 0.0})
    t0 = time.monotonic()
    result = train_adapter(bundle, data, ratios=default_ratios(data.sizes()), config=cfg,
                           general_share=cfg.general_share_or(suite.general_share))
    seconds = time.monotonic() - t0
    result.model.eval()
    return bundle, result, data, seconds


def parse_tiny(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of ``builtin:tiny``'s recipe (``TINY_SPEC``), for measuring
    another base size; ``builder`` cannot be set (it is bumped so the base is rebuilt).

    >>> parse_tiny(["num_hidden_layers=3", "hidden_size=192"])
    {'num_hidden_layers': 3, 'hidden_size': 192}
    >>> parse_tiny(["layers=3"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: error: --tiny 'layers=3': want KEY=VALUE with a TINY_SPEC key ... (keys: ...)
    >>> parse_tiny(["hidden_size=0"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: error: --tiny hidden_size=0: want a TINY_SPEC key and a positive number ...
    """
    from workers.training.tiny_recipe import TINY_SPEC

    keys = [k for k in TINY_SPEC if k != "builder"]
    want = f"a TINY_SPEC key and a positive number (keys: {', '.join(keys)})"
    out = common.key_values("--tiny", items, known=keys, want=want)
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SystemExit(f"error: --tiny {key}={value!r}: want {want}")
    return out


def use_tiny(overrides: dict[str, Any]) -> None:
    """Make this process build (and cache under a different name) ``builtin:tiny`` with
    ``overrides``: the recipe dict is patched in place, so the cache key and the builder both
    see it. Never used by the daemon; a base worth keeping goes into ``TINY_SPEC`` itself."""
    from workers.training.tiny_recipe import TINY_SPEC

    if overrides:
        TINY_SPEC.update(overrides)
        TINY_SPEC["builder"] += 1000  # a cache key the shipped recipe never has




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
    ap.add_argument("--quick", action="store_true",
                    help="festive-zh at 20 steps: a smoke run of the bench, not a figure")
    common.add_out(ap, "retention")
    args = ap.parse_args()
    if args.quick:
        args.suites, args.steps = ["builtin:festive-zh"], [20]
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
    common.write_json(args.out, {"command": common.command("retention"), "seed": args.seed,
                                 "limit": limit, "tiny": tiny, "runs": rows})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
