"""Attention per example of a packed row: the same loss and gradients as each example alone,
no mask built, and the model left as it was."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from workers.training.encode import Seq
from workers.training.loss import batch_loss
from workers.training.packed_attention import NAME, segments, use_packed
from workers.training.packing import make_batch


def _model(arch: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    shape: dict[str, Any] = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "attn_implementation": "sdpa"}
    if arch == "mistral":  # sliding window shorter than the longest example
        return MistralForCausalLM(MistralConfig(**shape, sliding_window=9)).eval()
    return LlamaForCausalLM(LlamaConfig(**shape)).eval()


def _seqs() -> list[Seq]:
    rng = random.Random(3)
    out = []
    for i, n in enumerate([5, 23, 11, 17, 8, 30]):
        out.append(Seq(ids=[rng.randrange(1, 97) for _ in range(n)], start=n // 3, task=i % 2))
    return out


def _loss_and_grads(model: Any, seqs: list[Seq], pack_len: int | None,
                    packed: bool) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    batch = make_batch(seqs, pad_id=0, pack_len=pack_len)
    with segments(batch.segments if packed else None):
        parts = batch_loss(model, batch)
        parts.total.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return float(parts.total.detach()), grads


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_packed_rows_match_each_example_alone(arch: str) -> None:
    model = _model(arch)
    seqs = _seqs()
    # Reference: one example per row, padded, with transformers' own sdpa and mask.
    model.zero_grad(set_to_none=True)
    alone = batch_loss(model, make_batch(seqs, pad_id=0, pack_len=None, packing=False))
    alone.total.backward()
    ref = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    with use_packed(model) as switched:
        assert switched and model.config._attn_implementation == NAME
        # Every example in one row, and in rows of 32 tokens with trailing padding.
        for pack_len in (None, 32):
            loss, grads = _loss_and_grads(model, seqs, pack_len, packed=True)
            assert loss == pytest.approx(float(alone.total.detach()), rel=1e-5)
            assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(grads, ref, strict=True))
        # Outside ``segments`` the same model builds sdpa's block mask: same result again.
        loss, _ = _loss_and_grads(model, seqs, 32, packed=False)
        assert loss == pytest.approx(float(alone.total.detach()), rel=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_one_row_holds_the_whole_batch() -> None:
    seqs = _seqs()
    batch = make_batch(seqs, pad_id=0, pack_len=None)
    assert batch.input_ids.shape == (1, sum(len(s.ids) for s in seqs))
    assert batch.segments is not None and sorted(batch.segments[0]) == sorted(
        len(s.ids) for s in seqs)
    rows = make_batch(seqs, pad_id=0, pack_len=32)
    assert rows.segments is not None
    assert sum(map(sum, rows.segments)) == rows.n_tokens
    assert len(rows.segments) > 1 and all(sum(r) <= 32 or len(r) == 1 for r in rows.segments)


def test_logits_in_chunks_give_the_same_loss_and_gradients() -> None:
    from workers.training.loss import target_logp

    model = _model("llama")
    batch = make_batch(_seqs(), pad_id=0, pack_len=None)
    targets = batch.labels[:, 1:]
    wanted = targets != -100
    results = []
    for chunk in (1 << 26, 97 * 7):  # all targets at once; 7 target rows per chunk
        model.zero_grad(set_to_none=True)
        with segments(batch.segments), use_packed(model):
            logp = target_logp(model, batch, wanted, targets[wanted], chunk=chunk)
            (-logp.mean()).backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters()
                                        if p.grad is not None]))
    (whole, g1), (chunked, g2) = results
    assert whole.shape == chunked.shape == (int(wanted.sum()),) and whole.shape[0] > 7
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))
