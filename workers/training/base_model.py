"""Resolve, build (``builtin:tiny``) and load base models, strictly offline.

``base_model`` is a builtin base (``builtin:tiny``, a Llama, or ``builtin:tiny-<arch>``, see
``storage.suite.BUILTIN_BASES``: built from the suite's data and cached under
``<artifacts>/_base/<name>-<content hash>/``), a local directory holding a causal LM (what
``save_pretrained`` writes: config.json, tokenizer files, safetensors), or a Hugging Face id
already in the local cache. Nothing ever touches the network: loads pass
``local_files_only=True``, and a bad id raises :class:`BaseModelError` naming it.

A ``base_model`` string names a model, not one set of weights: a builtin base is rebuilt
whenever its recipe or the suite's texts change. Each version records the resolved *build* it
was trained on (:func:`base_build`), and :func:`check_build` refuses to load it onto another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.artifacts import ArtifactError, fsync_path, read_meta
from storage.suite import BUILTIN_BASES, Suite, check_builtin_base
from workers.training.encode import PROMPT_FORMAT, recorded_format

if TYPE_CHECKING:  # torch loads only where a model does: the policy tick needs none
    import torch

log = logging.getLogger("adaptd.training")


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft probes an attribute transformers 5 deprecated on every adapter load: harmless,
    noisy. (A local filter, because test runners reset module-level warning filters.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message names it."""


@dataclass
class BaseBundle:
    model: Any  # a transformers PreTrainedModel (causal LM)
    tokenizer: Any  # a transformers tokenizer with a pad token
    path: Path  # directory the model was loaded from (or the hub cache snapshot)
    ref: str  # the suite's base_model string
    device: torch.device

    @property
    def build(self) -> str:
        return base_build(self.path)


def pick_device(choice: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when available (and asked for), else CPU with fp32."""
    import torch

    if choice in ("auto", "cuda") and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda"), dtype
    if choice == "cuda":
        raise BaseModelError("device 'cuda' requested but CUDA is not available")
    return torch.device("cpu"), torch.float32


def tiny_cache_key(suite: Suite) -> str:
    """Content hash of everything the suite's builtin base is built from (for a non-Llama
    base, its architecture's recipe too)."""
    from workers.training.tiny_arch import ARCHES
    from workers.training.tiny_recipe import TINY_SPEC, suite_texts

    tasks, general = suite_texts(suite)
    recipe: dict[str, Any] = {"spec": TINY_SPEC, "tasks": tasks, "general": general}
    arch = BUILTIN_BASES[suite.base_model]
    if arch != "llama":  # builtin:tiny keeps the key (and so the cached build) it always had
        recipe["arch"] = {"name": arch, **ARCHES[arch]}
    blob = json.dumps(recipe, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _tiny_name(suite: Suite) -> str:
    """The directory (and so the build) name of the suite's builtin base under ``_base``:
    ``tiny-<hash>``, ``tiny-qwen2-<hash>``, ..."""
    return f"{suite.base_model.removeprefix('builtin:')}-{tiny_cache_key(suite)}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one builder per base; others wait, then reuse
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_base(
    suite: Suite, artifacts_dir: Path, *, log: Callable[[str], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Return the local directory of the suite's base model, building a builtin base once
    (``progress`` hears the build's steps: ``tiny.build_tiny``)."""
    ref = suite.base_model
    if ref.startswith("builtin:"):
        try:
            check_builtin_base(ref)  # a suite copied with another base_model skips validation
        except ValueError as exc:
            raise BaseModelError(str(exc)) from None
        root = Path(artifacts_dir) / "_base"
        target = root / _tiny_name(suite)
        if (target / "config.json").is_file():
            return target
        with _file_lock(root / f".{target.name}.lock"):
            if (target / "config.json").is_file():
                return target
            from workers.training.tiny import build_tiny

            tmp = root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                build_tiny(suite, tmp, arch=BUILTIN_BASES[ref], log=log, progress=progress)
                _fsync_tree(tmp)
                os.rename(tmp, target)  # atomic: a reader sees all of it or nothing
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(f"base model {ref!r}: directory has no config.json")
        return local
    return _hub_snapshot(ref)


def _hub_snapshot(ref: str) -> Path:
    """A hub id that is already in the local cache; never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception as exc:  # the hub raises many types; all mean "not here"
        raise BaseModelError(
            f"base model {ref!r} is neither a builtin base ({', '.join(BUILTIN_BASES)}), a "
            f"local directory, nor a Hugging Face id in the local cache (adaptd never "
            f"downloads): {type(exc).__name__}"
        ) from None


def base_model_type(ref: str) -> str | None:
    """The transformers ``model_type`` of ``base_model`` without loading or building it: a
    builtin base's architecture, or the ``config.json`` of a local directory or of a hub id in
    the local cache; None when there is none to read.

    >>> base_model_type("builtin:tiny-phi3"), base_model_type("builtin:tiny")
    ('phi3', 'llama')
    """
    if ref in BUILTIN_BASES:
        return BUILTIN_BASES[ref]
    config: Any = Path(ref).expanduser() / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(ref, "config.json")
        except Exception:  # not a hub id either
            return None
        if not isinstance(config, str):
            return None
    try:
        model_type = json.loads(Path(config).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def base_build(path: Path) -> str:
    """The identity of a resolved base: the name of the directory it is loaded from.

    A builtin base: ``<name>-<content hash>`` (a new recipe or new suite texts give a new
    name); a hub id: the snapshot's commit hash; a local directory: its name, which does not
    notice weights replaced in place (hashing gigabytes on every load is not worth it) but
    lets ``base_model`` point at an old ``_base/tiny-<hash>`` directory and keep its adapters.
    """
    return Path(path).resolve().name


def expected_build(suite: Suite, artifacts_dir: Path) -> str | None:
    """The build :func:`ensure_base` resolves to now, without building or loading a model
    (for the policy tick, which must not build a base); None if the base cannot be resolved
    (the next training job reports why)."""
    try:
        if suite.base_model in BUILTIN_BASES:
            return _tiny_name(suite)
        return base_build(ensure_base(suite, artifacts_dir))  # a directory or hub cache lookup
    except BaseModelError:
        return None


def build_mismatch(version: Path, build: str, meta: Mapping[str, Any] | None = None) -> str | None:
    """Why ``version`` must not be loaded onto base build ``build``; None if it may.

    A version that records no build (written before builds were recorded, or with unreadable
    meta) may, with a warning: refusing it would break every existing work directory. Nor
    may a version trained with another prompt format (``encode.PROMPT_FORMAT``; versions
    written before formats were recorded are format 1).
    """
    try:
        meta = read_meta(version) if meta is None else meta
    except ArtifactError:
        meta = {}
    fmt = recorded_format(meta)
    if fmt != PROMPT_FORMAT:
        return (f"{version} was trained with prompt format {fmt!r} but this adaptd builds "
                f"prompts in format {PROMPT_FORMAT} (its LoRA weights learnt to answer prompts "
                f"built differently); retrain the adapter (its next training job starts from "
                f"fresh LoRA weights)")
    recorded = meta.get("base_build")
    if not recorded:
        log.warning("%s records no base build; loading it onto base build %s unchecked",
                    version, build)
        return None
    if recorded == build:
        return None
    old = Path(version).parent.parent / "_base" / str(recorded)  # <artifacts>/_base/<build>
    hint = (f", or set base_model to {old} (the old build is still there)"
            if (old / "config.json").is_file() else "")
    return (f"{version} was trained on base build {recorded!r} but the base loaded now is "
            f"build {build!r} (the base model was rebuilt or replaced: its weights and "
            f"tokenizer are not the ones these LoRA weights were trained with); retrain the "
            f"adapter on this base (its next training job starts from fresh LoRA weights){hint}")


def check_build(version: Path, build: str, meta: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ArtifactError` if ``version`` was trained on another base build."""
    why = build_mismatch(version, build, meta)
    if why is not None:
        raise ArtifactError(why)


def load_base(
    suite: Suite, artifacts_dir: Path, *, device: str = "auto",
    log: Callable[[str], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> BaseBundle:
    """Load the suite's base model and tokenizer onto the chosen device (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_base(suite, artifacts_dir, log=log, progress=progress)
    dev, dtype = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype
        )
    except Exception as exc:
        raise BaseModelError(
            f"base model {suite.base_model!r} at {path} cannot be loaded: {exc}"
        ) from None
    if tokenizer.pad_token_id is None:
        # Decoder-only models often ship without a pad token; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return BaseBundle(model=model, tokenizer=tokenizer, path=path, ref=suite.base_model, device=dev)


def find_lora_targets(model: torch.nn.Module) -> list[str]:
    """Names (leaf suffixes) of the Linear/Conv1D layers inside attention and MLP blocks."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    with contextlib.suppress(ImportError):
        from transformers.pytorch_utils import Conv1D

        linear_types = (torch.nn.Linear, Conv1D)
    getter: Any = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    names: set[str] = set()
    for full, module in model.named_modules():
        if not isinstance(module, linear_types) or module is output:
            continue
        parts = full.split(".")
        # Only layers inside repeated blocks ("layers.3.self_attn.q_proj", "h.0.mlp.c_fc"):
        # a numeric path component marks the block stack; heads and poolers have none.
        if any(p.isdigit() for p in parts):
            names.add(parts[-1])
    if not names:
        raise BaseModelError("no Linear layers found inside attention/MLP blocks for LoRA")
    return sorted(names)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath, name))
        fsync_path(Path(dirpath))
