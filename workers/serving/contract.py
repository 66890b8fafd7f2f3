"""The prompt contract: how an app builds exactly the tokens training used for a task.

Published with every route (docs/contracts.md section 11). ``prefix + prompt + suffix``, tokenized with
``add_special_tokens`` as given, equals ``workers.training.encode.prompt_ids`` (tests/serving
check it against the token ids vLLM reports). ``style`` says how the task is marked: ``tag``
(a literal task tag and separator) or ``chat`` (the chat template with ``system`` text; the
prefix and suffix are that template rendered around the user's prompt).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.training.encode import PROMPT_FORMAT, Tok, _separator, prompt_text, task_tag

_MARK = "\u2063adaptd-prompt\u2063"  # invisible separators: never part of a template


def prompt_contract(tokenizer: Tok, task: str) -> dict[str, Any]:
    """The contract of ``task`` under ``tokenizer`` (the version's base)."""
    text = prompt_text(tokenizer, task, _MARK)
    prefix, _, suffix = text.partition(_MARK)
    contract: dict[str, Any] = {"format": PROMPT_FORMAT, "prefix": prefix, "suffix": suffix,
                                "add_special_tokens": False}
    if getattr(tokenizer, "chat_template", None):
        contract.update(style="chat", system=f"Task: {task}")
    else:
        contract.update(style="tag", tag=task_tag(task), separator=_separator(tokenizer))
    return contract


def prompt_contracts(tokenizer: Tok, tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {t: prompt_contract(tokenizer, t) for t in tasks}


def build_prompt(contract: dict[str, Any], prompt: str) -> str:
    """What an app sends as the completion ``prompt`` (with the contract's
    ``add_special_tokens``).

    >>> build_prompt({"prefix": "<task:greeting>", "suffix": "<sep>"}, "hi {x}")
    '<task:greeting>hi {x}<sep>'
    """
    return f"{contract['prefix']}{prompt}{contract['suffix']}"
