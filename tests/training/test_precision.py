"""dtype and autocast per device, gradient checkpointing's "auto", the memory estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from storage.suite import Suite
from workers.training.base_model import load_base, pick_device
from workers.training.memory import BASES, BaseShape, estimate, model_shape, table
from workers.training.precision import autocast, autocast_dtype, checkpointing_wanted


def test_dtype_and_autocast_per_device() -> None:
    assert autocast_dtype(torch.device("cuda", 0), bf16_supported=True) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda", 0), bf16_supported=False) is None
    assert autocast_dtype(torch.device("cpu"), bf16_supported=True) is None
    device, dtype = pick_device("cpu")
    assert (device.type, dtype) == ("cpu", torch.float32)
    with autocast(device):  # CPU: full fp32, no autocast
        assert not torch.is_autocast_enabled("cpu")
        y = torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert y.dtype is torch.float32
    if not torch.cuda.is_available():
        auto_device, auto_dtype = pick_device("auto")
        assert (auto_device.type, auto_dtype) == ("cpu", torch.float32)


def test_checkpointing_auto_follows_the_estimate() -> None:
    shape = BASES["7B (Mistral-7B)"]
    lora = shape.lora_params(16)
    cuda = torch.device("cuda", 0)
    need = estimate(shape, lora_params=lora, tokens=8192).total
    assert checkpointing_wanted("auto", shape, lora_params=lora, tokens=8192, device=cuda,
                                device_bytes=int(need * 0.9))
    assert not checkpointing_wanted("auto", shape, lora_params=lora, tokens=8192, device=cuda,
                                    device_bytes=int(need * 1.5))
    cpu = torch.device("cpu")
    assert not checkpointing_wanted("auto", shape, lora_params=lora, tokens=8192, device=cpu)
    assert checkpointing_wanted("on", shape, lora_params=lora, tokens=8, device=cpu)
    assert not checkpointing_wanted("off", shape, lora_params=lora, tokens=8, device=cuda,
                                    device_bytes=1)


def test_estimate_grows_with_tokens_and_rank_and_checkpointing_saves() -> None:
    shape = BASES["1.5B (Qwen2.5-1.5B)"]
    small = estimate(shape, lora_params=shape.lora_params(8), tokens=4096)
    more = estimate(shape, lora_params=shape.lora_params(8), tokens=8192)
    wider = estimate(shape, lora_params=shape.lora_params(64), tokens=4096)
    saved = estimate(shape, lora_params=shape.lora_params(8), tokens=4096, checkpointing=True)
    assert more.total > small.total and wider.total > small.total
    assert saved.activations < small.activations / 5 and saved.weights == small.weights
    assert small.weights == shape.params * 2
    assert "| 7B (Mistral-7B) |" in table()


def test_lora_count_and_shape_match_a_real_model(suite: Suite, base_root: Path) -> None:
    from workers.training.config import TrainConfig
    from workers.training.trainer import wrap_lora

    bundle = load_base(suite, base_root, device="cpu")
    model = wrap_lora(bundle, TrainConfig(lora={"r": 4}), None)
    shape = model_shape(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.lora_params(4) == trainable
    assert shape.params == sum(p.numel() for p in bundle.model.parameters()
                               if not p.requires_grad) > 0
    cfg: Any = bundle.model.config
    assert (shape.layers, shape.hidden, shape.vocab) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size)


def test_shape_of_gpt2_names() -> None:
    from transformers import GPT2Config

    from workers.training.memory import shape_of

    s = shape_of(GPT2Config(n_layer=3, n_embd=48, n_head=4, vocab_size=100), 10)
    assert s == BaseShape(params=10, layers=3, hidden=48, intermediate=192, vocab=100, kv=48)
