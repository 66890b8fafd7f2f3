"""Numeric precision and memory per device: bf16 autocast on CUDA, gradient checkpointing
when a step would not fit.

On CUDA the base loads in bf16 (``base_model.pick_device``) and peft keeps the LoRA weights
in fp32; autocast runs the matmuls in bf16 while the optimizer updates fp32 weights, and the
loss takes the logits in fp32 (``loss.py``). On CPU everything stays fp32 with no autocast:
CPU bf16 matmuls are slower than fp32 ones on most CPUs, and CPU runs are bit-repeatable.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

from workers.training.memory import BaseShape, estimate

Checkpointing = Literal["auto", "on", "off"]
# "auto" checkpoints when the estimate exceeds this share of the GPU's memory: the estimate
# leaves out what other processes on the device hold.
FIT_SHARE = 0.85


def autocast_dtype(device: torch.device, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype for training on ``device``; None: no autocast (full fp32).

    >>> autocast_dtype(torch.device("cuda"), True), autocast_dtype(torch.device("cpu"), True)
    (torch.bfloat16, None)
    >>> autocast_dtype(torch.device("cuda"), False) is None
    True
    """
    return torch.bfloat16 if device.type == "cuda" and bf16_supported else None


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device with bf16, else nothing."""
    dtype = autocast_dtype(device, device.type == "cuda" and torch.cuda.is_bf16_supported())
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def checkpointing_wanted(setting: Checkpointing, shape: BaseShape, *, lora_params: int,
                         tokens: int, device: torch.device,
                         device_bytes: int | None = None) -> bool:
    """Whether to checkpoint: as set, or for ``auto`` when the estimated step without it
    exceeds ``FIT_SHARE`` of the device's memory (``device_bytes``, else CUDA's total; CPU
    runs have no such limit to fit and never checkpoint on ``auto``)."""
    if setting != "auto":
        return setting == "on"
    if device_bytes is None:
        if device.type != "cuda":
            return False
        device_bytes = int(torch.cuda.get_device_properties(device).total_memory)
    weight_bytes = 2 if device.type == "cuda" else 4
    need = estimate(shape, lora_params=lora_params, tokens=tokens, weight_bytes=weight_bytes)
    return need.total > FIT_SHARE * device_bytes
