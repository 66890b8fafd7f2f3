"""Benchmark: adaptd's trainer vs a plain transformers ``Trainer`` + peft with padded batches.

Same base model (the suite's builtin:tiny), same LoRA config, same examples, same number of
optimizer steps and examples per step, same optimizer/LR/schedule/clipping and seed. adaptd
packs examples into rows and runs the vocabulary projection only at target positions; the
baseline pads every example to the longest in the data set (``padding="max_length"``) and
uses the stock causal-LM loss. Each run is its own subprocess so peak RSS (ru_maxrss) is
comparable; runs alternate and repeat, the table reports medians. Both sides use the same
number of torch threads (``--threads``, default 1: on a shared 2-core machine more threads
mostly measure the neighbours).

``tokens/s`` counts real (non-pad) tokens of the examples trained on, for both sides.
``held-out loss`` is the token cross-entropy of held-out responses after training, computed by
the same function for both models.

    python -m bench.train [--suite S ...] [--steps 150] [--repeats 3] [--threads 1]
    python -m bench.train --quick     # festive-zh, 30 steps, one run per side
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from storage.suite import Suite, load_suite

LR, WARMUP, SEED = 2e-3, 5, 0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _setup(suite: Suite, artifacts: Path) -> tuple[Any, Any, list[Any], dict[str, list[Any]]]:
    from workers.training.base_model import load_base
    from workers.training.data import assemble
    from workers.training.sampler import GENERAL

    bundle = load_base(suite, artifacts, device="cpu")
    data = assemble(suite, sorted(suite.tasks))
    held = {t: d.heldout for t, d in data.tasks.items()}
    held[GENERAL] = data.general_heldout
    return bundle, data, sorted(data.tasks), held


def heldout_loss(model: Any, tokenizer: Any, held: dict[str, list[Any]]) -> float:
    from workers.training.evaluate import mean_loss

    total, weight = 0.0, 0
    for task, samples in held.items():
        loss = mean_loss(model, tokenizer, samples, task)
        if loss is not None:
            total += loss * len(samples)
            weight += len(samples)
    return total / max(weight, 1)


def run_adaptd(suite: Suite, artifacts: Path, steps: int, batch: int) -> dict[str, Any]:
    import peft  # noqa: F401 - imported before the clock starts, as in the baseline
    import torch

    from workers.training.config import Stage, TrainConfig
    from workers.training.trainer import train_adapter

    torch.manual_seed(SEED)
    bundle, data, _tasks, held = _setup(suite, artifacts)
    rss0 = _rss_mb()
    sizes = data.sizes()
    n_general = len(data.general_train)
    total = sum(sizes.values()) + n_general
    # Data-proportional mixture, as uniform shuffling in the baseline would give.
    ratios = {t: n / total for t, n in sizes.items()}
    cfg = TrainConfig(steps=steps, batch_examples=batch, lr=LR, warmup_steps=WARMUP, seed=SEED,
                      stages=[Stage(kind="mixed", fraction=1.0)], affinity_measurements=0,
                      unlikelihood_weight=0.0, negative_share=0.0, log_every=steps)
    t0 = time.perf_counter()
    result = train_adapter(bundle, data, ratios=ratios, config=cfg,
                           general_share=n_general / total)
    seconds = time.perf_counter() - t0
    return {"side": "adaptd", "seconds": seconds, "tokens": result.tokens,
            "tokens_per_s": result.tokens / seconds,
            "final_train_loss": result.history[-1]["loss"],
            "heldout_loss": heldout_loss(result.model, bundle.tokenizer, held),
            "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def run_baseline(suite: Suite, artifacts: Path, steps: int, batch: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from workers.training.base_model import find_lora_targets
    from workers.training.encode import encode_example
    from workers.training.sampler import GENERAL

    torch.manual_seed(SEED)
    bundle, data, tasks, held = _setup(suite, artifacts)
    rss0 = _rss_mb()
    tok = bundle.tokenizer
    t0 = time.perf_counter()
    samples = [(t, s) for t in tasks for s in data.tasks[t].train]
    samples += [(GENERAL, s) for s in data.general_train]
    seqs = [encode_example(tok, t, s.prompt, s.response, task_index=0) for t, s in samples]
    width = max(len(s.ids) for s in seqs)
    pad = int(tok.pad_token_id)
    rows = []
    for s in seqs:  # padding="max_length": every row as long as the longest example
        n = len(s.ids)
        rows.append({
            "input_ids": torch.tensor(s.ids + [pad] * (width - n)),
            "attention_mask": torch.tensor([1] * n + [0] * (width - n)),
            "labels": torch.tensor([-100] * s.start + s.ids[s.start:] + [-100] * (width - n)),
        })
    counted: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = {k: torch.stack([f[k] for f in features]) for k in features[0]}
        counted.append(int(out["attention_mask"].sum()))
        return out

    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=find_lora_targets(bundle.model), task_type="CAUSAL_LM")
    model = get_peft_model(bundle.model, lora)
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch,
            learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,
            weight_decay=0.0, max_grad_norm=1.0, logging_steps=steps, save_strategy="no",
            report_to="none", seed=SEED, use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        train_out = trainer.train()
    seconds = time.perf_counter() - t0
    tokens = sum(counted[:steps])  # the loader may fetch one batch ahead
    model.eval()
    return {"side": "baseline", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "final_train_loss": train_out.training_loss,
            "heldout_loss": heldout_loss(model, tok, held), "pad_width": width,
            "padding_fraction": 1 - tokens / (steps * batch * width),
            "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def _worker(ns: argparse.Namespace) -> None:
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(ns.threads)
    suite = load_suite(ns.suite)
    fn = run_adaptd if ns.worker == "adaptd" else run_baseline
    print(json.dumps(fn(suite, Path(ns.artifacts), ns.steps, ns.batch)))


def _spawn(ns: argparse.Namespace, suite: str, side: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train", "--worker", side, "--suite", suite, "--steps",
           str(ns.steps), "--batch", str(ns.batch), "--artifacts", ns.artifacts,
           "--threads", str(ns.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


ROWS = [("tokens/s (median)", "tokens_per_s", "{:.0f}"),
        ("train seconds", "seconds", "{:.2f}"),
        ("held-out loss", "heldout_loss", "{:.4f}"),
        ("final train loss", "final_train_loss", "{:.4f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("RSS before training MB", "rss_before_mb", "{:.0f}")]


def bench_suite(ns: argparse.Namespace, suite_ref: str) -> dict[str, Any]:
    """Alternating adaptd/baseline runs for one suite; medians, speedup, loss gap."""
    from workers.training.base_model import ensure_base

    print(f"\n== {suite_ref}: base {ensure_base(load_suite(suite_ref), Path(ns.artifacts))}",
          flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"adaptd": [], "baseline": []}
    for r in range(ns.repeats):
        for side in (("adaptd", "baseline") if r % 2 == 0 else ("baseline", "adaptd")):
            res = _spawn(ns, suite_ref, side)
            runs[side].append(res)
            print(f"  run {r + 1} {side:8s} {res['tokens_per_s']:9.0f} tok/s  "
                  f"held-out loss {res['heldout_loss']:.4f}", flush=True)
    med = {side: {key: statistics.median(x[key] for x in rs) for _, key, _ in ROWS}
           for side, rs in runs.items()}
    speedup = med["adaptd"]["tokens_per_s"] / med["baseline"]["tokens_per_s"]
    loss_gap = med["adaptd"]["heldout_loss"] / med["baseline"]["heldout_loss"] - 1
    pad = runs["baseline"][0]
    print(f"\n{'metric':26s} {'adaptd':>12s} {'baseline':>12s}")
    for label, key, fmt in ROWS:
        print(f"{label:26s} {fmt.format(med['adaptd'][key]):>12s} "
              f"{fmt.format(med['baseline'][key]):>12s}")
    print(f"speedup {speedup:.2f}x (goal >= 1.5x); held-out loss gap {loss_gap:+.2%} "
          f"(goal within 5%); baseline padding {pad['padding_fraction']:.0%} "
          f"(rows padded to {pad['pad_width']} tokens)")
    return {"median": med, "speedup": speedup, "heldout_loss_gap": loss_gap,
            "baseline_padding_fraction": pad["padding_fraction"],
            "goal_met": speedup >= 1.5 and abs(loss_gap) <= 0.05, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", action="append",
                   help="suite file or builtin:<name>; repeatable "
                        "(default: builtin:festive-zh and builtin:office-en)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both sides (1: steadier on a shared machine)")
    p.add_argument("--quick", action="store_true",
                   help="festive-zh only, 30 steps, one run per side (a smoke run, not a figure)")
    p.add_argument("--artifacts", default=str(common.ROOT / ".adaptd" / "bench-artifacts"))
    common.add_out(p, "train")
    p.add_argument("--worker", choices=["adaptd", "baseline"], help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker:
        ns.suite = ns.suite[0]
        _worker(ns)
        return
    if ns.quick:
        ns.suite, ns.steps, ns.repeats = ns.suite or ["builtin:festive-zh"], 30, 1
    suites = ns.suite or ["builtin:festive-zh", "builtin:office-en"]
    results = {ref: bench_suite(ns, ref) for ref in suites}
    out = {"steps": ns.steps, "batch_examples": ns.batch, "repeats": ns.repeats,
           "threads": ns.threads, "suites": results,
           "goal_met": all(r["goal_met"] for r in results.values()),
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    common.write_json(ns.out, out)
    print(f"\nwrote {ns.out}")


if __name__ == "__main__":
    main()
