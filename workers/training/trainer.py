"""The LoRA training loop. Reads top to bottom: one numbered comment per step.

Repeatable: with the same seed, data and config a CPU run gives the same weights (LoRA init
from ``torch.manual_seed``, batch composition and content from the sampler's seeded state,
no dropout by default). Resumable: every ``checkpoint_every`` steps the LoRA weights, AdamW
moments, sampler state and running losses go to ``checkpoint_dir`` (safetensors + JSON, see
``checkpoint.py``); a restarted run with the same fingerprint continues from there and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.training import affinity
from workers.training.base_model import BaseBundle, find_lora_targets, quiet_peft
from workers.training.checkpoint import load_checkpoint, save_checkpoint
from workers.training.config import TrainConfig
from workers.training.data import DataBundle, Sample
from workers.training.encode import Seq, encode_example
from workers.training.loss import batch_loss
from workers.training.memory import model_shape
from workers.training.packed_attention import NAME as PACKED
from workers.training.packed_attention import segments, use_packed
from workers.training.packing import Batch, make_batch
from workers.training.precision import autocast, checkpointing_wanted
from workers.training.sampler import (
    GENERAL,
    NEG_SUFFIX,
    MixtureSampler,
    source_ratios,
    stage_task_ratios,
)

log = logging.getLogger("adaptd.training")
PROBE_EXAMPLES = 8  # per task in a TAG probe batch (PolicyConfig.affinity_noise)
Progress = Callable[[dict[str, Any]], None]


class TrainingAborted(RuntimeError):
    """``should_stop`` asked the loop to stop (e.g. the job's lease was lost)."""


@dataclass
class TrainResult:
    model: Any  # the PeftModel, adapter "default" trained, in eval mode
    steps: int
    tokens: int  # real (non-pad) tokens processed
    seconds: float
    task_loss: dict[str, float]  # running loss per task at the end
    history: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, dict[str, float]] = field(default_factory=dict)
    drawn: dict[str, int] = field(default_factory=dict)  # examples drawn per source
    resumed_from: int | None = None


def encode_pools(tokenizer: Any, data: DataBundle, max_len: int) -> dict[str, list[Seq]]:
    """Tokenize every source once: tasks, their negatives, general data."""
    names = sorted(data.tasks)
    pools: dict[str, list[Seq]] = {}

    def enc(samples: list[Sample], task: str, idx: int, neg: bool = False) -> list[Seq]:
        seqs = [encode_example(tokenizer, task, s.prompt, s.response, task_index=idx, negative=neg)
                for s in samples]
        return [s for s in seqs if len(s.ids) <= max_len]  # over-long: dropped, never cut

    for idx, task in enumerate(names):
        pools[task] = enc(data.tasks[task].train, task, idx)
        good = {t for s in pools[task] for t in s.ids[s.start :]}
        negs = enc(data.tasks[task].negatives, task, idx, neg=True)
        for s in negs:
            s.ul_mask = [t not in good for t in s.ids[s.start :]]
        pools[task + NEG_SUFFIX] = [s for s in negs if any(s.ul_mask)]
    pools[GENERAL] = enc(data.general_train, GENERAL, -1)
    return pools


def wrap_lora(bundle: BaseBundle, config: TrainConfig, init_adapter: Path | None) -> Any:
    """A PeftModel with a trainable adapter "default", fresh or continued from a version."""
    from peft import LoraConfig, PeftModel, get_peft_model

    with quiet_peft():
        if init_adapter is not None:
            return PeftModel.from_pretrained(bundle.model, str(init_adapter), is_trainable=True)
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules or find_lora_targets(bundle.model),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(bundle.model, lora)


def fingerprint(config: TrainConfig, data: DataBundle, ratios: Mapping[str, float],
                init: str | None) -> str:
    blob = json.dumps([config.model_dump(mode="json"), data.hashes(), dict(ratios), init],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def train_adapter(
    bundle: BaseBundle, data: DataBundle, *, ratios: Mapping[str, float], config: TrainConfig,
    general_share: float, init_adapter: Path | None = None, checkpoint_dir: Path | None = None,
    progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
    show_bar: bool = False, observe: Mapping[str, list[Sample]] | None = None,
) -> TrainResult:
    """Train ``data``'s tasks at ``ratios``. ``observe``: tasks outside this adapter (forked
    out of it) whose examples only join the affinity probes, never a training batch, so the
    run measures how they and its tasks would affect each other if they shared again."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    t_start = time.monotonic()
    tasks = sorted(data.tasks)
    # 1. Seed everything that is random: LoRA init here, batches via the sampler's seed.
    torch.manual_seed(config.seed)
    model = wrap_lora(bundle, config, init_adapter)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # 2. Tokenize once; the sampler draws indices into these pools.
    pools = encode_pools(bundle.tokenizer, data, config.max_len)
    sampler = MixtureSampler({k: len(v) for k, v in pools.items()}, seed=config.seed)
    task_ratios = {t: float(ratios.get(t, 0.0)) for t in tasks if pools[t]}
    g_share = general_share if pools[GENERAL] else 0.0
    has_neg = {t: bool(pools[t + NEG_SUFFIX]) for t in tasks}
    # 3. AdamW over the LoRA weights only.
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    # 4. Resume from this run's last checkpoint if there is one.
    fp = fingerprint(config, data, task_ratios, str(init_adapter) if init_adapter else None)
    step, tokens, ema, history, probes_done, hard = 0, 0, {}, [], [], []
    resumed: int | None = None
    ckpt = load_checkpoint(checkpoint_dir, fingerprint=fp) if checkpoint_dir else None
    if ckpt is not None:
        set_peft_model_state_dict(model, ckpt.lora)
        opt.load_state_dict(ckpt.optimizer)
        if ckpt.rng is not None:
            torch.set_rng_state(ckpt.rng)
        sampler.load_state(ckpt.meta["sampler"])
        step, tokens, ema = ckpt.step, ckpt.meta["tokens"], ckpt.meta["ema"]
        history, probes_done = ckpt.meta["history"], ckpt.meta["affinity"]
        hard, resumed = ckpt.meta["hard"], ckpt.step
        log.info("resumed from checkpoint at step %d", step)
    plan = _stage_plan(config)
    observed = _observed_pools(bundle.tokenizer, observe or {}, config.max_len, skip=task_ratios)
    probe_steps = _probe_steps(config, plan, len(task_ratios) + len(observed))
    probe_batches = (_probe_batches({**pools, **observed}, [*task_ratios, *observed], bundle)
                     if probe_steps else {})
    bar = _Bar(config.steps, show_bar, done=step)
    pad_id = int(bundle.tokenizer.pad_token_id)
    # 5. Attention per example of a packed row, bf16 autocast on CUDA, and gradient
    #    checkpointing when the step would not fit in the device's memory without it.
    stack = contextlib.ExitStack()
    packed = stack.enter_context(use_packed(model))
    pack_len = row_length(config, pools, bundle.device, _attn_implementation(model))
    checkpointing = checkpointing_wanted(config.gradient_checkpointing, model_shape(model),
                                         lora_params=sum(p.numel() for p in params),
                                         tokens=_step_tokens(pools, config),
                                         device=bundle.device)
    if checkpointing:
        stack.enter_context(_gradient_checkpointing(model))
    try:
        while step < config.steps:
            # 6. Stop early if the caller says so (lease lost); the checkpoint stays usable.
            if should_stop is not None and should_stop():
                raise TrainingAborted(f"stopped at step {step}")
            stage_idx, stage, in_stage, stage_len = _locate(plan, step)
            if stage.kind == "hard" and not hard:
                hard = _hard_tasks(ema, task_ratios)
            # 7. This step's mixture: stage ratios -> sources (general share, negatives).
            st_ratios = stage_task_ratios(stage.kind, task_ratios, step_in_stage=in_stage,
                                          stage_len=stage_len, hard_tasks=hard)
            src_ratios = source_ratios(st_ratios, general_share=g_share,
                                       negative_share=config.negative_share,
                                       has_negatives=has_neg, has_general=bool(pools[GENERAL]))
            lr = _lr(config, step, stage.lr_scale)
            for group in opt.param_groups:
                group["lr"] = lr
            # 8. Gradient accumulation over micro-batches drawn by the ratios, packed rows;
            #    the backward pass inside the segments too (checkpointing recomputes there).
            opt.zero_grad(set_to_none=True)
            sums: dict[int, float] = {}
            counts: dict[int, int] = {}
            total_loss = 0.0
            # Composition is tracked per stage, and per block in the per_task stage, so a
            # block's general share is not starved by the previous blocks' draws.
            plan_key = f"s{stage_idx}" + (f"/{next(iter(st_ratios))}"
                                          if stage.kind == "per_task" else "")
            for _ in range(config.grad_accum):
                sources = sampler.plan(plan_key, src_ratios, config.batch_examples)
                seqs = [pools[s][sampler.draw(s)] for s in sources]
                batch = make_batch(seqs, pad_id=pad_id, pack_len=pack_len,
                                   packing=config.packing).to(bundle.device)
                with segments(batch.segments if packed else None), autocast(bundle.device):
                    parts = batch_loss(model, batch, ul_weight=config.unlikelihood_weight)
                    (parts.total / config.grad_accum).backward()
                total_loss += float(parts.total.detach()) / config.grad_accum
                tokens += batch.n_tokens
                for k, v in parts.task_sum.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + parts.task_count[k]
            # 9. Clip and update.
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            # 10. Per-task running loss (EMA) for the logs and the "hard" stage.
            for k, s in sums.items():
                name = tasks[k] if k >= 0 else GENERAL
                cur = s / max(counts[k], 1)
                ema[name] = cur if name not in ema else 0.8 * ema[name] + 0.2 * cur
            # 11. TAG affinity probes at a few steps of the mixed stage.
            if step in probe_steps and len(probes_done) < len(probe_steps):
                with autocast(bundle.device):
                    probes_done.append(affinity.measure(model, probe_batches, lr=lr))
            # 12. Log, report progress, checkpoint.
            info = {"step": step, "steps": config.steps, "stage": stage.kind, "lr": lr,
                    "loss": round(total_loss, 5), "tokens": tokens,
                    "task_loss": {k: round(v, 5) for k, v in sorted(ema.items())},
                    "tokens_per_s": round(tokens / max(time.monotonic() - t_start, 1e-9), 1)}
            if step % config.log_every == 0 or step == config.steps:
                history.append(info)
                log.info("step %d/%d %s loss %.4f %s", step, config.steps, stage.kind,
                         total_loss, " ".join(f"{k}={v:.3f}" for k, v in sorted(ema.items())))
            bar.update(step, total_loss)
            if progress is not None:
                progress(info)
            # The final step is checkpointed too: a crash during eval/write skips training.
            if checkpoint_dir is not None and (
                step % config.checkpoint_every == 0 or step == config.steps
            ):
                save_checkpoint(
                    checkpoint_dir, step=step, lora=get_peft_model_state_dict(model),
                    optimizer=opt,
                    meta={"fingerprint": fp, "sampler": sampler.state(), "tokens": tokens,
                          "ema": ema, "history": history, "affinity": probes_done, "hard": hard},
                )
    finally:
        bar.close()
        stack.close()
    # 13. Done: eval mode, summary.
    model.eval()
    drawn: dict[str, int] = {}
    for per_stage in sampler.counts.values():
        for src, n in per_stage.items():
            drawn[src] = drawn.get(src, 0) + n
    return TrainResult(
        model=model, steps=step, tokens=tokens, seconds=time.monotonic() - t_start,
        task_loss={k: round(v, 5) for k, v in ema.items()}, history=history,
        affinity=affinity.average(probes_done), drawn=drawn, resumed_from=resumed,
    )


# -- helpers -----------------------------------------------------------------------------------


def row_length(config: TrainConfig, pools: Mapping[str, list[Seq]], device: torch.device,
               attn: str) -> int | None:
    """Tokens per packed row: ``config.pack_len``, else automatic. None (one row per
    micro-batch, so no padding at all) where attention costs what the examples cost however
    long the row is: ``packed_sdpa`` and the flash-attention kernels. Other implementations
    compute a row's full attention square whatever the block mask, which costs more than the
    padding saved once rows get long on a CPU (GPUs are the other way round): a multiple of
    16 near 1.5x (CPU) or 8x (GPU) the 95th percentile example length."""
    if config.pack_len is not None or not config.packing:
        return config.pack_len or config.max_len
    if attn == PACKED or attn.startswith("flash_attention"):
        return None
    lengths = sorted(len(s.ids) for pool in pools.values() for s in pool)
    if not lengths:
        return 64
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    factor = 8.0 if device.type == "cuda" else 1.5
    return max(32, -(-int(factor * p95) // 16) * 16)


def _attn_implementation(model: Any) -> str:
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    return str(getattr(getattr(hf, "config", None), "_attn_implementation", None) or "eager")


def _step_tokens(pools: Mapping[str, list[Seq]], config: TrainConfig) -> int:
    """Tokens of the largest micro-batch the pools can make (the memory estimate's input)."""
    longest = sorted((len(s.ids) for pool in pools.values() for s in pool), reverse=True)
    return sum(longest[: config.batch_examples]) or config.max_len


@contextlib.contextmanager
def _gradient_checkpointing(model: Any) -> Iterator[None]:
    """Recompute each decoder layer in backward instead of keeping its activations."""
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        hf.gradient_checkpointing_disable()


def _stage_plan(config: TrainConfig) -> list[tuple[Any, int, int]]:
    """(stage, first step, length) for stages with at least one step."""
    out, at = [], 0
    for stage, n in config.stage_steps():
        if n > 0:
            out.append((stage, at, n))
            at += n
    return out


def _locate(plan: list[tuple[Any, int, int]], step: int) -> tuple[int, Any, int, int]:
    for idx, (stage, first, n) in enumerate(plan):
        if step < first + n:
            return idx, stage, step - first, n
    stage, first, n = plan[-1]
    return len(plan) - 1, stage, step - first, n


def _lr(config: TrainConfig, step: int, scale: float) -> float:
    """Linear warmup, then cosine decay to 10%, times the stage's scale."""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    progress = step / max(config.steps - 1, 1)
    return config.lr * scale * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _hard_tasks(ema: Mapping[str, float], task_ratios: Mapping[str, float]) -> list[str]:
    """Tasks whose running loss is at or above the median of the tasks' running losses."""
    losses = sorted(ema[t] for t in task_ratios if t in ema)
    if not losses:
        return sorted(task_ratios)
    median = losses[len(losses) // 2]
    return sorted(t for t in task_ratios if ema.get(t, median) >= median)


def _probe_steps(config: TrainConfig, plan: list[tuple[Any, int, int]], n_tasks: int) -> set[int]:
    mixed = [(first, n) for stage, first, n in plan if stage.kind == "mixed"]
    if n_tasks < 2 or not mixed or config.affinity_measurements == 0:
        return set()
    first, n = mixed[0]
    m = min(config.affinity_measurements, n)
    return {first + max(1, round(n * (k + 1) / (m + 1))) for k in range(m)}


def _probe_batches(
    pools: Mapping[str, list[Seq]], tasks: list[str], bundle: BaseBundle
) -> dict[str, Batch]:
    """Fixed probe batches: the first ``PROBE_EXAMPLES`` examples of every task pool."""
    pad = int(bundle.tokenizer.pad_token_id)
    return {t: make_batch(pools[t][:PROBE_EXAMPLES], pad_id=pad, pack_len=256).to(bundle.device)
            for t in tasks if pools[t]}


def _observed_pools(tokenizer: Any, observe: Mapping[str, list[Sample]], max_len: int, *,
                    skip: Mapping[str, float]) -> dict[str, list[Seq]]:
    """Probe-only pools of the observed tasks (none of the trained ones): as many examples
    as a probe batch takes, tagged as their own tasks; task index -1 keeps them out of the
    per-task loss accounting."""
    out: dict[str, list[Seq]] = {}
    for task in sorted(set(observe) - set(skip)):
        kept: list[Seq] = []
        for s in observe[task]:
            seq = encode_example(tokenizer, task, s.prompt, s.response, task_index=-1)
            if len(seq.ids) <= max_len:
                kept.append(seq)
            if len(kept) == PROBE_EXAMPLES:
                break
        if kept:
            out[task] = kept
    return out


class _Bar:
    """A rich progress bar when asked for (interactive runs); silent otherwise."""

    def __init__(self, total: int, enabled: bool, done: int = 0) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(transient=False)
            self._progress.start()
            self._task = self._progress.add_task("training", total=total, completed=done)

    def update(self, step: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step,
                                  description=f"training loss {loss:.3f}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
