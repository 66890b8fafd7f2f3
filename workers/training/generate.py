"""Generation: batched, left-padded, with the same prompt format as training.

:func:`generate_batch` works on any (PEFT) causal LM; :class:`AdapterServer` keeps one base
model in memory and loads adapter versions into it on demand (PEFT multi-adapter, at most
``max_cached`` at a time), verifying each version's sha256, and that it was trained on the
loaded base build, before it serves. It is what the app simulator and ``adaptd eval`` use.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from storage.artifacts import verify_version
from storage.suite import Suite
from workers.training.base_model import BaseBundle, check_build, load_base, quiet_peft
from workers.training.encode import Prompt, prompt_ids, stop_ids


@torch.no_grad()
def generate_batch(
    model: Any, tokenizer: Any, task: str, prompts: Sequence[Prompt], *, max_new_tokens: int = 48,
    do_sample: bool = True, temperature: float = 0.8, top_p: float = 0.95,
    seed: int | None = None, batch_size: int = 16,
) -> list[str]:
    """One output per prompt (a plain prompt or a conversation); greedy when ``do_sample`` is
    False."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = int(tokenizer.pad_token_id)
    # The end of turn answers are trained to end with, EOS, and what the model's own
    # generation config stops on (a hub model's lists its end of turn too).
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    eos = list(dict.fromkeys([*stop_ids(tokenizer), *(int(i) for i in configured
                                                       if i is not None)]))
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, task, p) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        # Left padding: every row's last prompt token sits at the same position.
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        kwargs: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **kwargs,
        )
        for row in out[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


class AdapterServer:
    """A base model plus a few adapter versions loaded into it (LRU)."""

    def __init__(
        self, suite: Suite, artifacts_dir: Path, *, max_cached: int = 4, device: str = "auto",
        bundle: BaseBundle | None = None,
    ) -> None:
        # The simulator prints its own progress; transformers' weight-loading bars would
        # interleave with it on every adapter load.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.bundle = bundle or load_base(suite, artifacts_dir, device=device)
        self.build = self.bundle.build
        self.max_cached = max(1, max_cached)
        self._model: Any = None  # PeftModel once the first adapter is loaded
        self._loaded: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(adapter: str, version: int) -> str:
        return f"{adapter}-v{version}"

    def _activate(self, adapter: str, version: int, path: Path, sha256: str | None) -> Any:
        from peft import PeftModel

        name = self.key(adapter, version)
        if name in self._loaded:
            self._loaded.move_to_end(name)
        else:
            verify_version(path, sha256)  # never serve a corrupted or swapped version
            check_build(path, self.build)  # nor one trained on another build of the base
            with quiet_peft():
                if self._model is None:
                    self._model = PeftModel.from_pretrained(
                        self.bundle.model, str(path), adapter_name=name
                    )
                else:
                    self._model.load_adapter(str(path), adapter_name=name)
            self._loaded[name] = path
            while len(self._loaded) > self.max_cached:
                old, _ = self._loaded.popitem(last=False)
                self._model.delete_adapter(old)
        self._model.set_adapter(name)
        self._model.eval()
        return self._model

    def generate(
        self, task: str, prompts: Sequence[Prompt], *, adapter: str | None = None,
        version: int | None = None, path: Path | None = None, sha256: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Outputs of ``adapter@version`` (stored at ``path``), or of the bare base model."""
        with self._lock:
            if adapter is None or version is None or path is None:
                if self._model is None:
                    return generate_batch(self.bundle.model, self.bundle.tokenizer, task,
                                          prompts, **kwargs)
                with self._model.disable_adapter():
                    return generate_batch(self._model, self.bundle.tokenizer, task, prompts,
                                          **kwargs)
            model = self._activate(adapter, version, Path(path), sha256)
            return generate_batch(model, self.bundle.tokenizer, task, prompts, **kwargs)
