"""Attention over packed rows at the cost of the examples, not of the row.

Given a packed row and ``attention_mask=None``, transformers' ``sdpa`` builds a block-diagonal
causal mask from the restarting position ids, and SDPA then computes the whole row's
``length x length`` score matrix and masks most of it away: the cost grows with the square
of the row, not with the sum of the squares of its examples. ``packed_sdpa`` runs SDPA once
per example instead (``is_causal``, no mask built at all), so rows can be as long as the
batch and carry no padding. The other stock implementations keep their own handling:
flash-attention kernels already read packed position ids as variable-length sequences.

Which examples a row holds is set around the forward *and* backward pass with
:func:`segments` (gradient checkpointing recomputes the forward during backward). Outside it
the implementation is plain ``sdpa``, mask included, so evaluation and generation on a model
switched to it (:func:`use_packed`) behave exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

NAME = "adaptd_packed_sdpa"
_SEGMENTS: ContextVar[Sequence[Sequence[int]] | None] = ContextVar("adaptd_segments",
                                                                   default=None)


@contextlib.contextmanager
def segments(lengths: Sequence[Sequence[int]] | None) -> Iterator[None]:
    """Within the block, attention treats row ``i`` as the examples ``lengths[i]`` (their
    token counts in order; the rest of the row is padding)."""
    token = _SEGMENTS.set(lengths)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def packed_sdpa(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA per example of each packed row; ``[rows, heads, length, dim]`` in,
    ``[rows, length, heads, dim]`` out, as transformers' attention functions."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = _SEGMENTS.get()
    if lengths is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("is_causal") is False or kwargs.get("position_bias") is not None:
        raise ValueError("packed attention covers causal attention without position bias")
    gqa = query.shape[1] != key.shape[1]
    window = kwargs.get("sliding_window")
    width = query.shape[2]
    rows = []
    for r, row in enumerate(lengths):
        parts, at = [], 0
        for n in row:
            q, k, v = (t[r : r + 1, :, at : at + n] for t in (query, key, value))
            mask = _window_mask(n, window, q.device) if window and n > window else None
            parts.append(F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, dropout_p=dropout,
                enable_gqa=gqa))
            at += n
        if at < width:  # trailing padding: no attention, and no gradient through it
            parts.append(query.new_zeros(1, query.shape[1], width - at, value.shape[-1]))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _window_mask(n: int, window: int, device: torch.device) -> torch.Tensor:
    """Causal and at most ``window`` tokens back (sliding-window layers)."""
    i = torch.arange(n, device=device)
    back = i[:, None] - i[None, :]
    return (back >= 0) & (back < window)


def _packed_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask while :func:`segments` is set (``packed_sdpa`` needs none), else sdpa's."""
    from transformers.masking_utils import sdpa_mask

    return None if _SEGMENTS.get() is not None else sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _packed_mask)


@contextlib.contextmanager
def use_packed(model: Any) -> Iterator[bool]:
    """Switch a (PEFT-wrapped) transformers model from ``sdpa`` to :func:`packed_sdpa` for
    the block; yields whether it did (other implementations are left alone)."""
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    config = getattr(hf, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(
        hf, "set_attn_implementation"
    ):
        yield False
        return
    _register()
    hf.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        hf.set_attn_implementation("sdpa")
