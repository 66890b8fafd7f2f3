"""Prompt format and tokenization: the one place a (task, prompt, response) becomes token ids.

Training and generation must build the prompt identically, so both call :func:`prompt_ids`.
The prompt carries an explicit task tag: a chat template's system turn when the tokenizer has
one, else a tag like ``<task:apology>`` (a special token in builtin tokenizers, plain text in
others) followed by a separator (``<sep>`` when the vocabulary has it, else a newline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SEP_TOKEN = "<sep>"  # noqa: S105 - a token, not a secret
PAD_TOKEN = "<pad>"  # noqa: S105 - a token, not a secret
EOS_TOKEN = "<eos>"  # noqa: S105 - a token, not a secret
BOS_TOKEN = "<bos>"  # noqa: S105 - a token, not a secret
# What the model sees around a (task, prompt, response): bump whenever prompt_text or
# encode_example change it. Each version records the format it was trained with, and one of
# another format is never served, evaluated or continued from (base_model.build_mismatch):
# its LoRA weights learnt to answer prompts built differently. A builtin base is rebuilt
# (new build) when its recipe changes, but a hub or local base stays the same build.
PROMPT_FORMAT = 1


def recorded_format(meta: Mapping[str, Any]) -> Any:
    """The prompt format a version's ``adaptd.json`` records (none: 1, the first format)."""
    return meta.get("prompt_format", 1)


def task_tag(task: str) -> str:
    return f"<task:{task}>"


class Tok(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    eos_token_id: Any
    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def get_vocab(self) -> dict[str, int]: ...
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def prompt_text(tokenizer: Tok, task: str, prompt: str) -> str:
    """The text the model sees before the response."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": f"Task: {task}"},
            {"role": "user", "content": prompt},
        ]
        try:
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        except Exception:  # some templates reject a system turn
            messages = [{"role": "user", "content": f"[{task}] {prompt}"}]
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
    return f"{task_tag(task)}{prompt}{_separator(tokenizer)}"


def _separator(tokenizer: Tok) -> str:
    """``<sep>`` when the vocabulary has it, else a newline (cached: get_vocab() is slow)."""
    sep = getattr(tokenizer, "_adaptd_sep", None)
    if sep is None:
        sep = SEP_TOKEN if SEP_TOKEN in tokenizer.get_vocab() else "\n"
        # A tokenizer that refuses attributes is simply not cached.
        with contextlib.suppress(AttributeError):
            tokenizer._adaptd_sep = sep  # type: ignore[attr-defined]
    return str(sep)


def prompt_ids(tokenizer: Tok, task: str, prompt: str) -> list[int]:
    return list(tokenizer.encode(prompt_text(tokenizer, task, prompt), add_special_tokens=False))


@dataclass
class Seq:
    """One tokenized example. Tokens at index >= ``start`` are targets (the response + EOS).

    ``negative`` marks a rejected output: its targets feed the unlikelihood term, restricted to
    ``ul_mask`` (tokens absent from the task's accepted outputs, so shared words like a name
    are not pushed down).
    """

    ids: list[int]
    start: int
    task: int  # index into the run's task list; -1 = general data
    negative: bool = False
    ul_mask: list[bool] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return len(self.ids) - self.start


def encode_example(
    tokenizer: Tok, task: str, prompt: str, response: str, *, task_index: int,
    negative: bool = False,
) -> Seq:
    """Prompt ids + response ids + EOS (tokenized separately so they match generation)."""
    head = prompt_ids(tokenizer, task, prompt)
    body = list(tokenizer.encode(response, add_special_tokens=False))
    eos = tokenizer.eos_token_id
    tail = [int(eos)] if eos is not None else []
    return Seq(ids=head + body + tail, start=len(head), task=task_index, negative=negative)


def encode_untagged(tokenizer: Tok, prompt: str, response: str) -> Seq:
    """``prompt<sep>response<eos>`` with no task tag, all of it targets (base pre-training:
    the instruction format without any task's label)."""
    return encode_plain(tokenizer, f"{prompt}{_separator(tokenizer)}{response}")


def encode_plain(tokenizer: Tok, text: str, *, task_index: int = -1) -> Seq:
    """A whole text as targets (language-model pre-training)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.append(int(eos))
    return Seq(ids=ids, start=1, task=task_index)
