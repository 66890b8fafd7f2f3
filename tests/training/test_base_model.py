"""Base models: builtin:tiny cached, local dirs, bad ids, LoRA targets, packing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from storage.suite import Suite
from workers.training.base_model import BaseModelError, ensure_base, find_lora_targets, load_base
from workers.training.encode import encode_example
from workers.training.loss import batch_loss, forward_logits, split_head, target_logits
from workers.training.packing import make_batch


@pytest.mark.parametrize("ref", ["no-such-org/no-such-model-xyz", "builtin:huge"])
def test_bad_base_model_gives_clear_error(suite: Suite, tmp_path: Path, ref: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = suite.model_copy(update={"base_model": ref})
    with pytest.raises(BaseModelError, match=re.escape(ref)):
        ensure_base(bad, tmp_path)
    with pytest.raises(BaseModelError, match="base model"):
        load_base(bad, tmp_path)


def test_local_dir_without_config(suite: Suite, tmp_path: Path) -> None:
    bad = suite.model_copy(update={"base_model": str(tmp_path)})
    with pytest.raises(BaseModelError, match=r"no config\.json"):
        ensure_base(bad, tmp_path)


def test_tiny_is_built_once_and_loads_as_a_local_dir(suite: Suite, base_root: Path) -> None:
    path = ensure_base(suite, base_root)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_base(suite, base_root) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    local = suite.model_copy(update={"base_model": str(path)})
    bundle = load_base(local, base_root / "unused", device="cpu")
    assert bundle.path == path and bundle.tokenizer.pad_token_id is not None


def test_lora_targets_found_automatically(bundle: Any) -> None:
    assert find_lora_targets(bundle.model) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert find_lora_targets(gpt2) == ["c_attn", "c_fc", "c_proj"]


def test_packing_matches_unpacked_loss(bundle: Any, suite: Suite) -> None:
    tok = bundle.tokenizer
    seqs = [encode_example(tok, t, e.prompt, e.response, task_index=i)
            for i, t in enumerate(sorted(suite.tasks)) for e in suite.seed_examples(t)[:3]]
    with torch.no_grad():
        packed = batch_loss(bundle.model, make_batch(seqs, pad_id=tok.pad_token_id, pack_len=64))
        padded = batch_loss(bundle.model, make_batch(seqs, pad_id=tok.pad_token_id, pack_len=64,
                                                     packing=False))
    assert make_batch(seqs, pad_id=0, pack_len=64).input_ids.shape[0] < len(seqs)
    assert float(packed.ce) == pytest.approx(float(padded.ce), abs=1e-4)
    for k, v in packed.task_sum.items():
        assert v == pytest.approx(padded.task_sum[k], rel=1e-4)


def test_head_only_at_target_positions_matches_full_forward(bundle: Any, suite: Suite) -> None:
    tok = bundle.tokenizer
    seqs = [encode_example(tok, "thanks", e.prompt, e.response, task_index=0)
            for e in suite.seed_examples("thanks")[:5]]
    batch = make_batch(seqs, pad_id=tok.pad_token_id, pack_len=64)
    wanted = batch.labels[:, 1:] != -100
    assert split_head(bundle.model) is not None
    with torch.no_grad():
        fast = target_logits(bundle.model, batch, wanted)
        full = forward_logits(bundle.model, batch)[:, :-1, :][wanted]
    assert fast.shape[0] == int(wanted.sum()) < batch.n_tokens
    assert torch.allclose(fast, full, atol=1e-4)


def test_negatives_feed_only_the_unlikelihood_term(bundle: Any) -> None:
    tok = bundle.tokenizer
    good = encode_example(tok, "apology", "订单出了问题", "王总，非常抱歉。", task_index=0)
    bad = encode_example(tok, "apology", "订单出了问题", "王总，新年好~", task_index=0,
                         negative=True)
    good_tokens = set(good.ids[good.start:])
    bad.ul_mask = [t not in good_tokens for t in bad.ids[bad.start:]]
    assert any(bad.ul_mask) and not all(bad.ul_mask)  # the shared name is not pushed down
    batch = make_batch([good, bad], pad_id=tok.pad_token_id, pack_len=64)
    assert int(batch.negative.sum()) == sum(bad.ul_mask)
    with torch.no_grad():
        plain = batch_loss(bundle.model, batch, ul_weight=0.0)
        with_ul = batch_loss(bundle.model, batch, ul_weight=0.5)
        alone = batch_loss(bundle.model, make_batch([good], pad_id=tok.pad_token_id,
                                                    pack_len=64))
    assert float(plain.ce) == pytest.approx(float(alone.ce), abs=1e-5)  # CE ignores the negative
    assert float(with_ul.ul) > 0
    assert float(with_ul.total) == pytest.approx(float(plain.ce) + 0.5 * float(with_ul.ul),
                                                 abs=1e-5)


def test_prompt_carries_the_task_tag(bundle: Any) -> None:
    import copy

    from workers.training.encode import prompt_ids, prompt_text

    tok = bundle.tokenizer
    assert prompt_text(tok, "apology", "hi") == "<task:apology>hi<sep>"
    assert prompt_ids(tok, "apology", "hi")[0] == tok.convert_tokens_to_ids("<task:apology>")
    chat = copy.deepcopy(tok)
    chat.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert prompt_text(chat, "apology", "hi") == "<system>Task: apology<user>hi<assistant>"


def test_tiny_never_saw_the_general_heldout_split(suite: Suite, bundle: Any) -> None:
    """The retention gate measures general loss on this split: a base pre-trained on it had
    memorised it, so every adapter looked like it forgot general ability."""
    from workers.training.data import assemble, pair_key
    from workers.training.evaluate import mean_loss
    from workers.training.sampler import GENERAL
    from workers.training.tiny_recipe import suite_texts

    data = assemble(suite, [])
    assert data.general_heldout and data.general_train
    seen = {pair_key(p, r) for p, r in suite_texts(suite)[1]}
    assert not seen & {pair_key(s.prompt, s.response) for s in data.general_heldout}
    assert {pair_key(s.prompt, s.response) for s in data.general_train} <= seen
    # Memorised vs unseen: the base's loss tells them apart.
    held = mean_loss(bundle.model, bundle.tokenizer, data.general_heldout, GENERAL)
    train = mean_loss(bundle.model, bundle.tokenizer, data.general_train[:32], GENERAL)
    assert held is not None and train is not None and held > 1.2 * train, (held, train)
