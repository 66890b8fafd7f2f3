"""The prompt contract: how an app builds exactly the tokens training used for a task.

Published with every route (docs/contracts.md section 11). ``prefix + prompt + suffix``, tokenized with
``add_special_tokens`` as given, equals ``workers.training.encode.prompt_ids`` (tests/serving
check it against the token ids vLLM reports). ``style`` says how the task is marked: ``tag``
(a literal task tag and separator) or ``chat`` (the chat template, the task marked by
``system`` text, or by ``user_prefix`` when the template refuses system turns; the prefix and
suffix are that template rendered around the user's prompt). A conversation under a chat
contract goes to the engine's chat API as :func:`contract_messages` (the template is the
engine's); under a tag contract it is one completion prompt (:func:`build_prompt`).
``stop_token_ids``: what generation stops on, the end of turn every trained answer ends with
first (``encode.stop_ids``).

The task marker and the way it is applied are ``encode.task_marker`` and
``encode.marked_messages``, the very functions training renders with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from workers.training.encode import (
    PROMPT_FORMAT,
    Conversation,
    Prompt,
    Tok,
    _separator,
    flat_text,
    marked_messages,
    prompt_text,
    stop_ids,
    takes_system_turn,
    task_marker,
    task_tag,
)

_MARK = "\u2063adaptd-prompt\u2063"  # invisible separators: never part of a template


def prompt_contract(tokenizer: Tok, task: str) -> dict[str, Any]:
    """The contract of ``task`` under ``tokenizer`` (the version's base)."""
    text = prompt_text(tokenizer, task, _MARK)
    prefix, _, suffix = text.partition(_MARK)
    contract: dict[str, Any] = {"format": PROMPT_FORMAT, "prefix": prefix, "suffix": suffix,
                                "add_special_tokens": False,
                                "stop_token_ids": stop_ids(tokenizer)}
    if getattr(tokenizer, "chat_template", None):
        contract.update(style="chat",
                        **task_marker(task, system_turn=takes_system_turn(tokenizer)))
    else:
        contract.update(style="tag", tag=task_tag(task), separator=_separator(tokenizer))
    return contract


def prompt_contracts(tokenizer: Tok, tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {t: prompt_contract(tokenizer, t) for t in tasks}


def build_prompt(contract: Mapping[str, Any], prompt: Prompt) -> str:
    """What an app sends as the completion ``prompt`` (with the contract's
    ``add_special_tokens``): a plain prompt, or under a tag contract a conversation (its turns
    as docs/contracts.md section 3 says).

    >>> build_prompt({"prefix": "<task:greeting>", "suffix": "<sep>"}, "hi {x}")
    '<task:greeting>hi {x}<sep>'
    """
    if isinstance(prompt, Conversation) and len(prompt.turns) > 1 \
            and contract.get("style") == "chat":
        raise ValueError("a conversation under a chat contract goes to the chat API "
                         "(contract_messages)")
    return f"{contract['prefix']}{flat_text(prompt)}{contract['suffix']}"


def contract_messages(contract: Mapping[str, Any], prompt: Prompt) -> list[dict[str, str]]:
    """The ``messages`` an app sends to the engine's chat API (which applies the base's chat
    template with the generation prompt) under a chat contract: the conversation with the
    task marked as training marked it.

    >>> contract_messages({"style": "chat", "system": "Task: t"}, "hi")
    [{'role': 'system', 'content': 'Task: t'}, {'role': 'user', 'content': 'hi'}]
    """
    if contract.get("style") != "chat":
        raise ValueError("only a chat contract renders messages; a tag contract is one "
                         "completion prompt (build_prompt)")
    return marked_messages(contract, prompt)
