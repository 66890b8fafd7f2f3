"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is ``ckpt-<step>.safetensors`` (LoRA weights under ``lora/``, AdamW moments
under ``opt/<param index>/<name>``, the torch CPU RNG under ``rng/cpu``) plus ``ckpt.json``
(step, sampler state, running losses, optimizer param groups, and which tensor file belongs
to it). The JSON is written last with an atomic rename, so it always names a complete tensor
file; a checkpoint from a different run (its ``fingerprint`` differs) is ignored, and so is
one trained on another base build (:func:`pin_build`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from storage.artifacts import fsync_path

META = "ckpt.json"
BUILD = "base-build"


@dataclass
class Checkpoint:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # a torch optimizer state_dict
    rng: torch.Tensor | None
    meta: dict[str, Any]  # JSON-able run state (sampler, losses, ...)


def save_checkpoint(
    directory: Path, *, step: int, lora: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer, meta: dict[str, Any],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"lora/{k}": v.detach().to("cpu").contiguous() for k, v in lora.items()
    }
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"opt/{idx}/{name}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    tensors["rng/cpu"] = torch.get_rng_state()
    name = f"ckpt-{step}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file(tensors, str(tmp))
    fsync_path(tmp)
    os.replace(tmp, directory / name)
    body = {"step": step, "tensors": name, "param_groups": opt_state["param_groups"], **meta}
    tmp_meta = directory / (META + ".tmp")
    tmp_meta.write_text(json.dumps(body), encoding="utf-8")
    fsync_path(tmp_meta)
    os.replace(tmp_meta, directory / META)
    fsync_path(directory)
    for old in directory.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, *, fingerprint: str) -> Checkpoint | None:
    """The newest checkpoint of the run with ``fingerprint``, or None."""
    meta_path = directory / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint:
            return None
        tensors = load_file(str(directory / meta["tensors"]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable: start over rather than fail the job
    lora = {k.removeprefix("lora/"): v for k, v in tensors.items() if k.startswith("lora/")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer = {"state": state, "param_groups": meta.pop("param_groups")}
    return Checkpoint(
        step=int(meta["step"]), lora=lora, optimizer=optimizer, rng=tensors.get("rng/cpu"),
        meta=meta,
    )


def pin_build(directory: Path, build: str) -> None:
    """Tie ``directory``'s checkpoints to base build ``build``; drop those of another build.

    The run fingerprint does not cover the base, and LoRA weights resumed onto a base that was
    rebuilt since are the upgrade hazard itself. A directory without the marker (older code)
    keeps its checkpoint.
    """
    marker = directory / BUILD
    if marker.is_file() and marker.read_text(encoding="utf-8") != build:
        (directory / META).unlink(missing_ok=True)  # load_checkpoint finds nothing to resume
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(build, encoding="utf-8")
