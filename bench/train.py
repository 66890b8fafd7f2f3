"""Benchmark: adaptd's trainer vs a plain transformers ``Trainer`` + peft with padded batches.

Same base model (the suite's builtin:tiny), same LoRA config, same examples, same number of
optimizer steps and examples per step, same optimizer/LR/schedule/clipping and seed. adaptd
packs examples into rows and runs the vocabulary projection only at target positions; the
baseline pads each batch to its longest example (transformers' ``DataCollatorForSeq2Seq``,
``padding="longest"``) and uses the stock causal-LM loss. Each run is its own subprocess so
peak RSS (ru_maxrss) is comparable; runs alternate and repeat, the table reports medians.
Both sides use the same number of torch threads (``--threads``, default 1: on a shared 2-core
machine more threads mostly measure the neighbours).

Two data profiles: ``long`` (the default figure) rebuilds the suite's tasks at production
lengths, a system prompt per task and answers of 64–1,024 tokens (``bench/train_data.py``);
``short`` trains on the suite's own one-line examples (10–43 tokens).

Throughput counts real (non-pad) tokens of the examples trained on, for both sides, per
second of the run's own CPU time (one thread: the work it did, whatever else the machine
ran meanwhile) and per wall-clock second. ``held-out loss`` is the token cross-entropy of
held-out responses after training, computed by the same function for both models. Goal:
>= 1.5x the baseline's tokens per CPU second with held-out loss within 2 %.

    python -m bench.train [--profile long|short ...] [--suite S ...] [--repeats 3]
    python -m bench.train --quick     # one suite, few steps, one run per side
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.train_data import long_profile
from storage.suite import Suite, load_suite

LR, WARMUP, SEED = 2e-3, 5, 0
MAX_LEN = 4096  # no example of either profile is dropped


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _setup(suite: Suite, artifacts: Path,
           profile: str) -> tuple[Any, Any, list[Any], dict[str, list[Any]]]:
    from workers.training.base_model import load_base
    from workers.training.data import assemble
    from workers.training.sampler import GENERAL

    bundle = load_base(suite, artifacts, device="cpu")
    if profile == "long":
        data = long_profile(suite, bundle.tokenizer, seed=SEED)
    else:
        data = assemble(suite, sorted(suite.tasks))
    held = {t: d.heldout for t, d in data.tasks.items()}
    held[GENERAL] = data.general_heldout
    return bundle, data, sorted(data.tasks), held


def _train_config(steps: int, batch: int) -> Any:
    from workers.training.config import Stage, TrainConfig

    return TrainConfig(steps=steps, batch_examples=batch, lr=LR, warmup_steps=WARMUP, seed=SEED,
                       stages=[Stage(kind="mixed", fraction=1.0)], affinity_measurements=0,
                       unlikelihood_weight=0.0, negative_share=0.0, log_every=steps,
                       max_len=MAX_LEN)


def heldout_loss(model: Any, tokenizer: Any, held: dict[str, list[Any]]) -> float:
    from workers.training.evaluate import mean_loss

    total, weight = 0.0, 0
    for task, samples in held.items():
        loss = mean_loss(model, tokenizer, samples, task)
        if loss is not None:
            total += loss * len(samples)
            weight += len(samples)
    return total / max(weight, 1)


def run_adaptd(suite: Suite, artifacts: Path, steps: int, batch: int,
               profile: str) -> dict[str, Any]:
    import peft  # noqa: F401 - imported before the clock starts, as in the baseline
    import torch

    from workers.training.trainer import train_adapter

    torch.manual_seed(SEED)
    bundle, data, _tasks, held = _setup(suite, artifacts, profile)
    rss0 = _rss_mb()
    sizes = data.sizes()
    n_general = len(data.general_train)
    total = sum(sizes.values()) + n_general
    # Data-proportional mixture, as uniform shuffling in the baseline would give.
    ratios = {t: n / total for t, n in sizes.items()}
    cfg = _train_config(steps, batch)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_adapter(bundle, data, ratios=ratios, config=cfg,
                           general_share=n_general / total)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"side": "adaptd", "seconds": seconds, "tokens": result.tokens,
            "tokens_per_s": result.tokens / seconds, "cpu_seconds": cpu,
            "tokens_per_cpu_s": result.tokens / cpu,
            "final_train_loss": result.history[-1]["loss"],
            "heldout_loss": heldout_loss(result.model, bundle.tokenizer, held),
            "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def run_baseline(suite: Suite, artifacts: Path, steps: int, batch: int,
                 profile: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from workers.training.base_model import find_lora_targets
    from workers.training.encode import encode_example
    from workers.training.sampler import GENERAL
    from workers.training.trainer import _lr

    torch.manual_seed(SEED)
    bundle, data, tasks, held = _setup(suite, artifacts, profile)
    rss0 = _rss_mb()
    tok = bundle.tokenizer
    t0, c0 = time.perf_counter(), time.process_time()
    samples = [(t, s) for t in tasks for s in data.tasks[t].train]
    samples += [(GENERAL, s) for s in data.general_train]
    seqs = [encode_example(tok, t, s.prompt, s.response, task_index=0) for t, s in samples]
    rows = [{"input_ids": s.ids, "attention_mask": [1] * len(s.ids),
             "labels": [-100] * s.start + s.ids[s.start:]} for s in seqs]
    # transformers' own collator, padding each batch to its longest example.
    pad_batch = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    counted: list[tuple[int, int, int]] = []  # (real tokens, width, rows) per batch

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(pad_batch(features))
        rows_n, width = out["input_ids"].shape
        counted.append((int(out["attention_mask"].sum()), int(width), int(rows_n)))
        return out

    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=find_lora_targets(bundle.model), task_type="CAUSAL_LM")
    model = get_peft_model(bundle.model, lora)
    # The same optimizer and learning-rate schedule as adaptd's trainer, step for step.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, foreach=True)
    cfg = _train_config(steps, batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr(cfg, i, 1.0) / LR)
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch,
            learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, logging_steps=steps,
            save_strategy="no", report_to="none", seed=SEED, use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                          optimizers=(opt, sched))
        train_out = trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    used = counted[:steps]  # the loader may fetch one batch ahead
    tokens = sum(n for n, _, _ in used)
    model.eval()
    return {"side": "baseline", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "cpu_seconds": cpu, "tokens_per_cpu_s": tokens / cpu,
            "final_train_loss": train_out.training_loss,
            "heldout_loss": heldout_loss(model, tok, held),
            "mean_pad_width": statistics.mean(w for _, w, _ in used),
            "padding_fraction": 1 - tokens / sum(w * r for _, w, r in used),
            "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def _worker(ns: argparse.Namespace) -> None:
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(ns.threads)
    suite = load_suite(ns.suite)
    fn = run_adaptd if ns.worker == "adaptd" else run_baseline
    print(json.dumps(fn(suite, Path(ns.artifacts), ns.steps, ns.batch, ns.profile[0])))


def _spawn(ns: argparse.Namespace, case: Case, side: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train", "--worker", side, "--suite", case.suite,
           "--profile", case.profile, "--steps", str(case.steps), "--batch", str(case.batch),
           "--artifacts", ns.artifacts, "--threads", str(ns.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


ROWS = [("tokens per CPU second", "tokens_per_cpu_s", "{:.0f}"),
        ("tokens per wall second", "tokens_per_s", "{:.0f}"),
        ("train CPU seconds", "cpu_seconds", "{:.2f}"),
        ("train wall seconds", "seconds", "{:.2f}"),
        ("held-out loss", "heldout_loss", "{:.4f}"),
        ("final train loss", "final_train_loss", "{:.4f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("RSS before training MB", "rss_before_mb", "{:.0f}")]
SPEEDUP_GOAL, LOSS_GOAL = 1.5, 0.02


@dataclass(frozen=True)
class Case:
    profile: str
    suite: str
    steps: int
    batch: int


# Steps and batch per profile: the long profile's 16 steps of 8 examples train on about
# 90,000 tokens, under a minute of CPU per run on one thread.
PROFILES: dict[str, dict[str, Any]] = {
    "long": {"suites": ["builtin:festive-zh"], "steps": 16, "batch": 8},
    "short": {"suites": ["builtin:festive-zh"], "steps": 150, "batch": 16},
}


def bench_case(ns: argparse.Namespace, case: Case) -> dict[str, Any]:
    """Alternating adaptd/baseline runs for one case; medians, speedup, loss gap."""
    from workers.training.base_model import ensure_base

    print(f"\n== {case.profile} profile, {case.suite}: {case.steps} steps x {case.batch} "
          f"examples, base {ensure_base(load_suite(case.suite), Path(ns.artifacts))}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"adaptd": [], "baseline": []}
    for r in range(ns.repeats):
        for side in (("adaptd", "baseline") if r % 2 == 0 else ("baseline", "adaptd")):
            res = _spawn(ns, case, side)
            runs[side].append(res)
            print(f"  run {r + 1} {side:8s} {res['tokens_per_cpu_s']:9.0f} tok/CPU-s "
                  f"{res['tokens_per_s']:9.0f} tok/s  held-out loss {res['heldout_loss']:.4f}",
                  flush=True)
    med = {side: {key: statistics.median(x[key] for x in rs) for _, key, _ in ROWS}
           for side, rs in runs.items()}
    ratios = sorted(a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
                    for a, b in zip(runs["adaptd"], runs["baseline"], strict=True))
    speedup = med["adaptd"]["tokens_per_cpu_s"] / med["baseline"]["tokens_per_cpu_s"]
    wall = med["adaptd"]["tokens_per_s"] / med["baseline"]["tokens_per_s"]
    loss_gap = med["adaptd"]["heldout_loss"] / med["baseline"]["heldout_loss"] - 1
    pad = runs["baseline"][0]
    print(f"\n{'metric':26s} {'adaptd':>12s} {'baseline':>12s}")
    for label, key, fmt in ROWS:
        print(f"{label:26s} {fmt.format(med['adaptd'][key]):>12s} "
              f"{fmt.format(med['baseline'][key]):>12s}")
    print(f"speedup {speedup:.2f}x in tokens per CPU second (paired runs {ratios[0]:.2f}-"
          f"{ratios[-1]:.2f}x; goal >= {SPEEDUP_GOAL}x), {wall:.2f}x in wall time; held-out loss "
          f"gap {loss_gap:+.2%} (goal within {LOSS_GOAL:.0%}); baseline padding "
          f"{pad['padding_fraction']:.0%} (rows padded to {pad['mean_pad_width']:.0f} tokens on "
          f"average)")
    return {"steps": case.steps, "batch_examples": case.batch, "median": med,
            "speedup": speedup, "speedup_range": [ratios[0], ratios[-1]], "wall_speedup": wall,
            "heldout_loss_gap": loss_gap, "baseline_padding_fraction": pad["padding_fraction"],
            "goal_met": speedup >= SPEEDUP_GOAL and abs(loss_gap) <= LOSS_GOAL, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", action="append", choices=sorted(PROFILES),
                   help="data profile; repeatable (default: long, then short)")
    p.add_argument("--suite", action="append",
                   help="suite file or builtin:<name>; repeatable (default: the profile's, "
                        "builtin:festive-zh for both)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: long 16, short 150)")
    p.add_argument("--batch", type=int, help="examples per step (default: long 8, short 16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both sides (1: steadier on a shared machine)")
    p.add_argument("--quick", action="store_true",
                   help="one suite, a quarter of the steps, one run per side (a smoke run)")
    p.add_argument("--artifacts", default=str(common.ROOT / ".adaptd" / "bench-artifacts"))
    common.add_out(p, "train")
    p.add_argument("--worker", choices=["adaptd", "baseline"], help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker:
        ns.suite = ns.suite[0]
        _worker(ns)
        return
    profiles = ns.profile or ["long", "short"]
    cases = []
    for name in profiles:
        spec = PROFILES[name]
        suites = ns.suite or spec["suites"]
        steps = ns.steps or spec["steps"]
        if ns.quick:
            suites, steps = suites[:1], max(1, steps // 4)
        cases += [Case(name, ref, steps, ns.batch or spec["batch"]) for ref in suites]
    if ns.quick:
        ns.repeats = 1
    where = common.machine()
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        results.setdefault(case.profile, {})[case.suite] = bench_case(ns, case)
    out = {"command": common.command("train"), "repeats": ns.repeats, "threads": ns.threads,
           "machine": where, "profiles": results,
           "goal_met": all(r["goal_met"] for per in results.values() for r in per.values()),
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    common.write_json(ns.out, out)
    print(f"\nwrote {ns.out}")


if __name__ == "__main__":
    main()
