"""Evaluation of one model (base, candidate or production adapter) on held-out data.

Per task, on at most ``prompts_per_task`` held-out prompts, each answered
``samples_per_prompt`` times with production's sampling (or once, greedily, with
``sampling=False``). The sampling seed depends only on the config and the task, so a model's
numbers are repeatable and candidate and production are compared on identical inputs and
random draws:

- ``quality``: the pluggable scorer's mean; default: 0 if a ``forbid`` phrase appears, else
  the best character n-gram F1 (chrF-like, n = 1..3) against the prompt's reference and the
  task's other accepted responses (generator suites have many valid responses per prompt);
- ``crosstalk_rate`` / ``crosstalk_source``: share of outputs that carry another task's
  style (explicit markers or the n-gram style detector), and the most frequent source;
- ``loss``: mean token cross-entropy of the held-out references.
Plus ``general_loss``: mean token loss on held-out general data (general-ability retention).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch

from storage.suite import Suite
from workers.training.config import EvalConfig
from workers.training.data import DataBundle, Sample
from workers.training.encode import encode_example, request_text
from workers.training.generate import generate_batch
from workers.training.loss import batch_loss
from workers.training.packing import make_batch
from workers.training.sampler import GENERAL
from workers.training.style import StyleDetector, crosstalk_source, suite_markers

# (task, request, output, refs) -> 0..1; the request is a conversation's last user turn.
Scorer = Callable[[str, str, str, Sequence[str]], float]


@lru_cache(maxsize=16384)
def _ngrams(text: str, n: int) -> tuple[Counter[str], int]:
    """The character n-gram multiset of ``text`` and its size. Cached: the default scorer
    compares every output with every reference of its task (16 × 4 outputs × 65 references
    per task and side), so without the cache each text is counted once per pair, which was
    two thirds of a shared adapter's evaluation time (README, Benchmarks: eval scoring).
    Callers must not change the returned Counter."""
    grams = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    return grams, len(text) - n + 1 if len(text) >= n else 0


def char_f1(hyp: str, ref: str, sizes: Sequence[int] = (1, 2, 3)) -> float:
    """Mean over n of the F1 between the character n-gram multisets of hyp and ref.

    >>> char_f1("新年快乐", "新年快乐"), char_f1("新年快乐", "抱歉打扰"), char_f1("", "")
    (1.0, 0.0, 1.0)
    >>> round(char_f1("新年快乐", "新春快乐"), 4)
    0.3611
    """
    scores = []
    for n in sizes:
        h, h_size = _ngrams(hyp, n)
        r, r_size = _ngrams(ref, n)
        if not h or not r:
            scores.append(1.0 if not h and not r else 0.0)
            continue
        # The same sum as ``(h & r).values()``, with the key intersection done in C.
        overlap = sum(min(h[g], r[g]) for g in h.keys() & r.keys())
        p, rec = overlap / h_size, overlap / r_size
        scores.append(0.0 if overlap == 0 else 2 * p * rec / (p + rec))
    return sum(scores) / len(scores)


def default_scorer(suite: Suite) -> Scorer:
    def score(task: str, prompt: str, output: str, refs: Sequence[str]) -> float:
        spec = suite.tasks.get(task)
        if spec is not None and any(f and f in output for f in spec.forbid):
            return 0.0
        return max((char_f1(output, r) for r in refs), default=0.0)

    return score


@torch.no_grad()
def mean_loss(model: Any, tokenizer: Any, samples: Sequence[Sample], task: str) -> float | None:
    """Mean token cross-entropy of the responses (None without samples)."""
    if not samples:
        return None
    seqs = [encode_example(tokenizer, task, s.prompt, s.response, task_index=0) for s in samples]
    total, count = 0.0, 0
    pad = int(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    for i in range(0, len(seqs), 32):
        parts = batch_loss(model, make_batch(seqs[i : i + 32], pad_id=pad, pack_len=256).to(device),
                           per_task=False)
        total += float(parts.ce) * parts.n_pos
        count += parts.n_pos
    return round(total / max(count, 1), 5)


def evaluate_model(
    model: Any, tokenizer: Any, data: DataBundle, suite: Suite, *, tasks: Sequence[str],
    detector: StyleDetector | None, cfg: EvalConfig | None = None, scorer: Scorer | None = None,
    with_general: bool = True, progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``{"tasks": {task: {...}}, "general_loss": x}`` for the model as it is now.
    ``progress`` hears ``{"task": name}`` as each task's evaluation ends."""
    cfg = cfg or EvalConfig()
    scorer = scorer or default_scorer(suite)
    markers = suite_markers(suite)
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        td = data.tasks.get(task)
        held = td.heldout[: cfg.prompts_per_task] if td else []
        if not held:
            out["tasks"][task] = {"n": 0, "quality": None, "crosstalk_rate": None,
                                  "crosstalk_source": None, "loss": None}
            if progress is not None:
                progress({"task": task})
            continue
        pool = [s.response for s in (td.train if td else [])][:64]
        # Each prompt k times in a row; output i answers held[i // k].
        k = cfg.samples_per_prompt if cfg.sampling else 1
        asked = [s for s in held for _ in range(k)]
        outputs = generate_batch(model, tokenizer, task, [s.prompt for s in asked],
                                 max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sampling,
                                 temperature=cfg.temperature, top_p=cfg.top_p,
                                 seed=cfg.seed + zlib.crc32(task.encode()),
                                 batch_size=cfg.batch_size)
        scores, leaks, sources = [], [], []
        for s, text in zip(asked, outputs, strict=True):
            scores.append(scorer(task, request_text(s.prompt), text, [s.response, *pool]))
            src = crosstalk_source(text, task, detector=detector, markers=markers,
                                   margin=cfg.crosstalk_margin)
            leaks.append(int(src is not None))
            if src is not None:
                sources.append(src)
        common = Counter(sources).most_common(1)
        out["tasks"][task] = {
            "n": len(asked),
            "quality": round(sum(scores) / len(scores), 5),
            "crosstalk_rate": round(len(sources) / len(asked), 5),
            "crosstalk_source": common[0][0] if common else None,
            "loss": mean_loss(model, tokenizer, held, task),
            # Per output, in a fixed order: the gate pairs them with the other model's.
            "scores": [round(x, 4) for x in scores],
            "leaks": leaks,
            "samples": [{"prompt": request_text(s.prompt), "output": o}
                        for s, o in list(zip(asked, outputs, strict=True))[:: k][:3]],
        }
        if progress is not None:
            progress({"task": task})
    if with_general:
        gen = data.general_heldout[: cfg.general_examples]
        out["general_loss"] = mean_loss(model, tokenizer, gen, GENERAL) if gen else None
    model.train(was_training)
    return out


def compare(candidate: Mapping[str, Any], production: Mapping[str, Any]) -> dict[str, Any]:
    """Per task deltas (candidate - production); ``forgetting`` is the quality lost, if any."""
    out: dict[str, Any] = {}
    for task, c in candidate.get("tasks", {}).items():
        p = production.get("tasks", {}).get(task, {})
        cq, pq = c.get("quality"), p.get("quality")
        cx, px = c.get("crosstalk_rate"), p.get("crosstalk_rate")
        dq = None if cq is None or pq is None else round(cq - pq, 5)
        out[task] = {
            "delta_quality": dq,
            "delta_crosstalk": None if cx is None or px is None else round(cx - px, 5),
            "forgetting": None if dq is None else round(max(0.0, -dq), 5),
        }
    deltas = [v["delta_quality"] for v in out.values() if v["delta_quality"] is not None]
    return {"tasks": out,
            "backward_transfer": round(sum(deltas) / len(deltas), 5) if deltas else None}
