"""Self-audit: find and train away another task's style before a version serves.

A one-task adapter of a high-risk task, trained on its own data only, still answers a few
percent of fresh requests in a co-task's style (the base pulls that way on ambiguous
requests). Feedback fixes that only after users have seen the leaks. The audit does what the
users would have done, before they can: after training, each audited task (by risk level,
or flagged by the policy engine because its users saw it leak: ``RiskPolicy.audit_at``)
answers ``samples`` fresh requests from the suite's prompt generators with production's
sampling; the answers that carry another task's style (its ``markers``, else the style
detector: the same test the evaluation uses) become negatives for ``steps`` more training
steps (the unlikelihood term), continued from the trained weights. Repeat for ``rounds``,
fewer if a round finds nothing on every task it asked (a flagged task is asked in the first
``flagged_rounds``). A round that finds more than the one before still trains: what a late
round finds is what the earlier rounds' training left, and training on it lowers the leak
further.

A task of a file suite
has no prompt generators, so its requests come from what the run knows the task is asked:
its seed prompts and the prompts of its users' feedback in the data (accepted, corrected and
rejected answers alike: the rejected ones are where it failed before), the production
distribution the generators only approximate. Requests equal to a held-out prompt are
skipped, so the evaluation that gates the version never scores an answer the audit trained
against.

Crash safety: rounds are deterministic (seeded requests and sampling), and each round trains
with its own checkpoint directory, so a restarted job repeats the finished rounds' sampling
and resumes the interrupted round's training from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from storage.suite import Suite
from workers.training.base_model import BaseBundle
from workers.training.config import EvalConfig, TrainConfig
from workers.training.data import DataBundle, Sample, fresh_request
from workers.training.encode import Prompt
from workers.training.generate import generate_batch
from workers.training.sampler import NEG_SUFFIX
from workers.training.style import StyleDetector, crosstalk_source, suite_markers
from workers.training.trainer import Progress, train_adapter


def audit_requests(suite: Suite, task: str, *, samples: int, seed: int,
                   known: Sequence[Prompt] = (), stream: str = "audit") -> list[Prompt]:
    """``samples`` requests for ``task``: fresh ones from the suite's prompt generators, or,
    for a task without any, drawn from ``known`` (the requests it is known to get; by
    default its seed prompts). Deterministic in ``seed`` and ``stream``: another stream
    (``bench/final_versions.py``'s) draws other requests than the audit's on the same seed.

    >>> from storage.suite import Suite, TaskSpec
    >>> suite = Suite(tasks={"sorry": TaskSpec(risk="high", data="sorry.jsonl")})
    >>> audit_requests(suite, "sorry", samples=4, seed=1, known=["a", "b", "a"])
    ['b', 'a', 'a', 'a']
    """
    rng = random.Random(f"{stream}:{seed}:{task}")
    if suite.tasks[task].prompts:
        return [fresh_request(suite, task, rng) for _ in range(samples)]
    # Ordered by text (conversations after plain prompts): a set's order is not repeatable.
    pool = sorted(set(known) or {e.prompt for e in suite.seed_examples(task)},
                  key=lambda p: (False, p) if isinstance(p, str) else (True, repr(p)))
    return rng.choices(pool, k=samples) if pool else []


@torch.no_grad()
def find_leaks(
    model: Any, tokenizer: Any, suite: Suite, task: str, *, samples: int, seed: int,
    detector: StyleDetector | None, ecfg: EvalConfig, skip: Collection[Prompt] = (),
    known: Sequence[Prompt] = (),
) -> list[Sample]:
    """``task``'s answers to ``audit_requests`` that carry another task's style."""
    asks = [p for p in audit_requests(suite, task, samples=samples, seed=seed, known=known)
            if p not in skip]
    if not asks:
        return []
    outputs = generate_batch(model, tokenizer, task, asks, max_new_tokens=ecfg.max_new_tokens,
                             temperature=ecfg.temperature, top_p=ecfg.top_p,
                             seed=seed + zlib.crc32(task.encode()), batch_size=ecfg.batch_size)
    markers = suite_markers(suite)
    return [Sample(task, p, o, "negative") for p, o in zip(asks, outputs, strict=True)
            if crosstalk_source(o, task, detector=detector, markers=markers,
                                margin=ecfg.crosstalk_margin) is not None]


def audit_done(leaks: Mapping[str, int]) -> str | None:
    """Why a round that found ``leaks`` (per asked task) ends the audit, or None to train on:
    ``"clean"`` when it found nothing.

    >>> audit_done({"sorry": 0, "reply": 0}), audit_done({"sorry": 0, "reply": 1})
    ('clean', None)
    """
    return "clean" if not any(leaks.values()) else None


def audit_adapter(
    bundle: BaseBundle, model: Any, data: DataBundle, *, suite: Suite,
    ratios: Mapping[str, float], config: TrainConfig, general_share: float,
    detector: StyleDetector | None, ecfg: EvalConfig, checkpoint_dir: Path | None = None,
    progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
    flagged: Collection[str] = (),
) -> tuple[Any, list[dict[str, Any]]]:
    """The audited model (``model`` itself if nothing was audited) and one record per round.

    ``model`` is the PeftModel ``train_adapter`` returned on ``bundle``; ``data`` is not
    changed (the rounds train on a copy with the found outputs added as negatives). The
    adapter's tasks of ``config.audit.risks`` are audited in every round; the tasks in
    ``flagged`` (the policy engine's: their users saw them leak) whatever their risk, in the
    first ``config.audit.flagged_rounds`` rounds.
    """
    audit = config.audit
    by_risk = {t for t in data.tasks if suite.tasks[t].risk in audit.risks}
    audited = sorted(by_risk | ({t for t in flagged if t in data.tasks}
                                if audit.flagged_rounds else set()))
    if not audited or audit.rounds == 0:
        return model, []
    data = dataclasses.replace(data, tasks={
        t: dataclasses.replace(d, negatives=list(d.negatives)) for t, d in data.tasks.items()})
    heldout = {t: {s.prompt for s in data.tasks[t].heldout} for t in audited}
    # Requests the task is known to get (seeds and feedback), for tasks without generators;
    # taken before the rounds add their own finds, so every round draws from the same pool.
    known = {t: [s.prompt for s in (*data.tasks[t].train, *data.tasks[t].negatives)]
             for t in audited}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adaptd-audit-") as scratch:
        root = checkpoint_dir if checkpoint_dir is not None else Path(scratch)
        for k in range(1, audit.rounds + 1):
            asked = [t for t in audited if t in by_risk or k <= audit.flagged_rounds]
            if not asked:
                break
            t0 = time.monotonic()
            if progress is not None:
                progress({"round": k, "rounds": audit.rounds})
            # 1. Each audited task answers fresh requests; leaks become its negatives.
            model.eval()
            found = {t: find_leaks(model, bundle.tokenizer, suite, t, samples=audit.samples,
                                   seed=config.seed * 1000 + k, detector=detector, ecfg=ecfg,
                                   skip=heldout[t], known=known[t])
                     for t in asked}
            for t, leaks in found.items():
                data.tasks[t].negatives.extend(leaks)
            counts = {t: len(v) for t, v in found.items()}
            record: dict[str, Any] = {"round": k, "samples": audit.samples, "leaks": counts,
                                      "steps": 0}
            # 2. As clean as this audit can tell: end here.
            stopped = audit_done(counts)
            rounds.append(record)
            if stopped:
                record["stopped"] = stopped
                record["seconds"] = round(time.monotonic() - t0, 3)
                break
            # 3. Train on from these weights: the trainer continues from a saved version, so
            #    save it and take the LoRA layers off the base before it wraps it again.
            init = root / f"audit-{k}" / "init"
            model.save_pretrained(str(init), selected_adapters=["default"],
                                  safe_serialization=True)
            base = model.unload()
            result = train_adapter(
                dataclasses.replace(bundle, model=base), data, ratios=ratios,
                config=config.model_copy(update={"steps": audit.steps, "seed": config.seed + k}),
                general_share=general_share, init_adapter=init,
                checkpoint_dir=root / f"audit-{k}" / "ckpt" if checkpoint_dir else None,
                progress=_in_round(progress, k, audit.rounds), should_stop=should_stop)
            model = result.model
            record["steps"] = result.steps
            record["resumed_from"] = result.resumed_from  # a restarted job's round: its step
            record["negatives_drawn"] = {t: result.drawn.get(t + NEG_SUFFIX, 0) for t in audited}
            record["seconds"] = round(time.monotonic() - t0, 3)
    return model, rounds


def _in_round(progress: Progress | None, k: int, rounds: int) -> Progress | None:
    """The trainer's step reports, marked with the audit round they belong to."""
    if progress is None:
        return None
    report = progress
    return lambda info: report({**info, "round": k, "rounds": rounds})
