"""Loss over a packed batch: token cross-entropy on accepted targets, unlikelihood on rejected
ones, and per-task sums for logging and affinity.

The output projection (vocabulary-sized) runs only at target positions: the decoder produces
hidden states, and ``lm_head`` is applied to the rows that predict a response token. Prompt
and padding positions never pay for a vocabulary projection or a softmax. Models whose
causal-LM head does more than a linear projection (logit soft-capping or scaling) take the
plain full forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from workers.training.memory import LOGIT_CHUNK
from workers.training.packing import IGNORE, Batch


@dataclass
class LossParts:
    total: torch.Tensor  # what backward() sees
    ce: torch.Tensor  # mean cross-entropy over positive targets
    ul: torch.Tensor  # mean unlikelihood over negative targets (0 if none)
    n_pos: int  # positive target tokens
    task_sum: dict[int, float]  # task index -> summed CE (detached)
    task_count: dict[int, int]  # task index -> positive target tokens


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    )
    return out.logits


_SCALED_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, lm_head) of a (PEFT-wrapped) causal LM when the head is a plain Linear."""
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    prefix = getattr(hf, "base_model_prefix", "")
    decoder = getattr(hf, prefix, None) if prefix else None
    get_head = getattr(hf, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    config = getattr(hf, "config", None)
    if not isinstance(decoder, torch.nn.Module) or decoder is hf:
        return None
    if not isinstance(head, torch.nn.Linear):
        return None
    if any(getattr(config, a, None) not in (None, 1, 1.0) for a in _SCALED_HEAD_ATTRS):
        return None
    return decoder, head


def target_logits(model: torch.nn.Module, batch: Batch, wanted: torch.Tensor) -> torch.Tensor:
    """Logits (float32) at the shifted positions selected by ``wanted`` [rows, length-1]."""
    parts = split_head(model)
    if parts is None:
        return forward_logits(model, batch)[:, :-1, :][wanted].float()
    decoder, head = parts
    return head(_hidden(decoder, batch)[:, :-1, :][wanted]).float()


def _hidden(decoder: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return decoder(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    ).last_hidden_state


def _logp(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def target_logp(model: torch.nn.Module, batch: Batch, wanted: torch.Tensor,
                targets: torch.Tensor, *, chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """log p(target) at the positions selected by ``wanted``. The vocabulary-sized logits are
    made ``chunk`` elements at a time, each chunk recomputed in backward instead of
    kept, so a step never holds all targets' logits (at a 150,000-token vocabulary, 16
    examples of 512 targets would take 15 GiB for them). Below one chunk: in one go."""
    parts = split_head(model)
    if parts is None:
        logits = forward_logits(model, batch)[:, :-1, :][wanted].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    decoder, head = parts
    hidden = _hidden(decoder, batch)[:, :-1, :][wanted]
    rows = max(1, chunk // max(int(getattr(head, "out_features", 1)), 1))
    if hidden.shape[0] <= rows:
        return _logp(head, hidden, targets)
    return torch.cat([
        checkpoint(_logp, head, h, t, use_reentrant=False)
        for h, t in zip(hidden.split(rows), targets.split(rows), strict=True)
    ])


def batch_loss(
    model: torch.nn.Module, batch: Batch, *, ul_weight: float = 0.0, per_task: bool = True
) -> LossParts:
    # Position t predicts token t+1: shift once here, for every term below.
    targets = batch.labels[:, 1:]
    tasks = batch.task_ids[:, 1:]
    neg = batch.negative[:, 1:]
    pos = (targets != IGNORE) & ~neg
    wanted = targets != IGNORE
    tok_logp = target_logp(model, batch, wanted, targets[wanted])
    sel_pos = pos[wanted]
    sel_neg = neg[wanted]
    n_pos = int(sel_pos.sum())
    ce = -tok_logp[sel_pos].sum() / max(n_pos, 1)
    total = ce
    ul = torch.zeros((), device=tok_logp.device)
    if ul_weight > 0 and bool(sel_neg.any()):
        # Unlikelihood (Welleck et al. 2019): -log(1 - p(token)) pushes a rejected token down.
        p = tok_logp[sel_neg].exp().clamp(max=1 - 1e-6)
        ul = -torch.log1p(-p).mean()
        total = total + ul_weight * ul
    task_sum: dict[int, float] = {}
    task_count: dict[int, int] = {}
    if per_task and n_pos:
        # One bincount per batch (task ids shifted by 1 so general data, -1, is bin 0).
        ce_tok = -tok_logp.detach()[sel_pos]
        bins = (tasks[wanted][sel_pos] + 1).cpu()
        sums = torch.bincount(bins, weights=ce_tok.double().cpu()).tolist()
        counts = torch.bincount(bins).tolist()
        for b, (s, c) in enumerate(zip(sums, counts, strict=True)):
            if c:
                task_sum[b - 1] = float(s)
                task_count[b - 1] = int(c)
    return LossParts(
        total=total, ce=ce, ul=ul, n_pos=n_pos, task_sum=task_sum, task_count=task_count
    )
