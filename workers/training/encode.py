"""Prompt format and tokenization: the one place a (task, prompt, response) becomes token ids.

Training and generation must build the prompt identically, so both call :func:`prompt_ids`.
A prompt is the app's request: a plain string, or a :class:`Conversation` (the turns the app
sent, system first if any, ending with the user turn the response answers). The prompt carries
an explicit task tag: a chat template's system turn when the tokenizer has one, else a tag like
``<task:apology>`` (a special token in builtin tokenizers, plain text in others) followed by a
separator (``<sep>`` when the vocabulary has it, else a newline). docs/contracts.md section 3
says how a conversation is rendered, so an app can build the same tokens; the route's prompt
contract (``workers.serving.contract``) publishes the task marker :func:`task_marker` makes
and applies it with :func:`marked_messages`, the functions training renders with.

An answer ends with the token that closes an assistant turn (:func:`turn_end_id`): under a
chat template the one the template itself writes after an answer (ChatML ``<|im_end|>``,
Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``, Mistral ``</s>``), which is not always the
tokenizer's EOS; without a template, EOS. Generation stops on it and on EOS
(:func:`stop_ids`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

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


def task_system(task: str) -> str:
    """The system text that marks the task under a chat template."""
    return f"Task: {task}"


def task_user_prefix(task: str) -> str:
    """What marks the task at the start of the first user turn under a chat template that
    refuses a system turn."""
    return f"[{task}] "


def task_marker(task: str, *, system_turn: bool) -> dict[str, str]:
    """How ``task`` is marked under a chat template: ``{"system": ...}`` (the system turn's
    text) or, for a template that refuses system turns, ``{"user_prefix": ...}``."""
    return {"system": task_system(task)} if system_turn else {"user_prefix": task_user_prefix(task)}


Turn = tuple[str, str]  # (role, content); roles: system | user | assistant


@dataclass(frozen=True)
class Conversation:
    """The app's conversation up to the request (OpenAI chat roles, text only): an optional
    system turn first, then user and assistant turns, ending with a user turn.

    >>> c = Conversation.of([{"role": "system", "content": "Be brief."},
    ...                      {"role": "user", "content": "hi"}])
    >>> c.system, c.request, c.as_messages()[1]
    ('Be brief.', 'hi', {'role': 'user', 'content': 'hi'})
    """

    turns: tuple[Turn, ...]

    def __post_init__(self) -> None:
        if not self.turns or self.turns[-1][0] != "user":
            raise ValueError("a conversation ends with a user turn")
        for i, (role, _) in enumerate(self.turns):
            if role not in ("system", "user", "assistant") or (role == "system" and i):
                raise ValueError(f"turn {i}: role {role!r} (a system turn only comes first)")

    @classmethod
    def of(cls, messages: Iterable[Mapping[str, str]]) -> Conversation:
        return cls(tuple((str(m["role"]), str(m["content"])) for m in messages))

    @property
    def system(self) -> str | None:
        return self.turns[0][1] if self.turns[0][0] == "system" else None

    @property
    def request(self) -> str:
        """The last user turn: what the response answers."""
        return self.turns[-1][1]

    @property
    def dialogue(self) -> tuple[Turn, ...]:
        """The user and assistant turns (everything but the system turn)."""
        return self.turns[1:] if self.system is not None else self.turns

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.turns]


Prompt = str | Conversation


def as_conversation(prompt: Prompt) -> Conversation:
    """A plain prompt is a conversation of one user turn."""
    return prompt if isinstance(prompt, Conversation) else Conversation((("user", prompt),))


def request_text(prompt: Prompt) -> str:
    """The text the response answers: the prompt, or a conversation's last user turn."""
    return prompt.request if isinstance(prompt, Conversation) else prompt


def flat_text(prompt: Prompt) -> str:
    """One string for a prompt (keys, lengths, hashes): a plain prompt, or a conversation of
    one user turn, is its text; a longer conversation is its turns as ``role: content``
    lines (the rendering of a tokenizer without a chat template)."""
    conv = as_conversation(prompt)
    if len(conv.turns) == 1:
        return conv.request
    return "\n".join(f"{role}: {content}" for role, content in conv.turns)


class Tok(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    eos_token_id: Any
    chat_template: Any

    @property
    def all_special_ids(self) -> Any: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def get_vocab(self) -> dict[str, int]: ...
    def get_added_vocab(self) -> dict[str, int]: ...
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def marked_messages(marker: Mapping[str, str], prompt: Prompt) -> list[dict[str, str]]:
    """The messages a chat template renders for a prompt under a :func:`task_marker`.

    ``system``: the task's system text first, the app's own system prompt after it (a blank
    line between). ``user_prefix``: the prefix, then the app's system prompt and a blank line,
    at the start of the first user turn.

    >>> marked_messages({"user_prefix": "[t] "}, Conversation.of(
    ...     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]))
    [{'role': 'user', 'content': '[t] Be brief.\\n\\nhi'}]
    """
    conv = as_conversation(prompt)
    turns = [{"role": r, "content": c} for r, c in conv.dialogue]
    if "system" in marker:
        system = marker["system"] + (f"\n\n{conv.system}" if conv.system is not None else "")
        return [{"role": "system", "content": system}, *turns]
    head = marker["user_prefix"] + (f"{conv.system}\n\n" if conv.system is not None else "")
    first = next(i for i, t in enumerate(turns) if t["role"] == "user")
    turns[first] = {"role": "user", "content": head + turns[first]["content"]}
    return turns


def _per_template(tokenizer: Tok, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, cached on the tokenizer for its current chat template (a copy given
    another template computes again; a tokenizer that refuses attributes, every time)."""
    key = (name, repr(getattr(tokenizer, "chat_template", None)))  # a str, or a dict of them
    cache = getattr(tokenizer, "_adaptd_cache", None)
    if not isinstance(cache, dict):
        cache = {}
        with contextlib.suppress(AttributeError):
            tokenizer._adaptd_cache = cache  # type: ignore[attr-defined]
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def takes_system_turn(tokenizer: Tok) -> bool:
    """Whether the tokenizer's chat template renders a system turn (some refuse one)."""
    def compute() -> bool:
        try:
            _render(tokenizer, [{"role": "system", "content": "s"},
                                {"role": "user", "content": "u"}])
        except Exception:  # templates raise what they like (jinja's TemplateError, ValueError)
            return False
        return True

    return bool(_per_template(tokenizer, "system", compute))


def prompt_text(tokenizer: Tok, task: str, prompt: Prompt) -> str:
    """The text the model sees before the response.

    With a chat template: the conversation marked with :func:`task_marker` (a system turn, or
    a prefix of the first user turn when the template refuses system turns) as
    :func:`marked_messages` says, rendered with the generation prompt. Without one: the task
    tag, the prompt (:func:`flat_text`), the separator. A plain prompt is a conversation of
    one user turn, so both give the same text for it.
    """
    conv = as_conversation(prompt)
    if getattr(tokenizer, "chat_template", None):
        marker = task_marker(task, system_turn=takes_system_turn(tokenizer))
        return _render(tokenizer, marked_messages(marker, conv))
    return f"{task_tag(task)}{flat_text(conv)}{_separator(tokenizer)}"


def _render(tokenizer: Tok, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


_ANSWER = "\u2063adaptd-answer\u2063"  # invisible separators: never part of a template


def turn_end_id(tokenizer: Tok) -> int | None:
    """The token an answer ends with: under a chat template, the first special or added token
    the template writes after an assistant answer (the template's own end of turn); without a
    template, or when the template writes none, EOS."""
    def compute() -> int | None:
        eos = tokenizer.eos_token_id
        fallback = None if eos is None else int(eos)
        if not getattr(tokenizer, "chat_template", None):
            return fallback
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _ANSWER}]
        try:
            text = str(tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception:  # a template that renders no such conversation: EOS it is
            return fallback
        _, marked, tail = text.partition(_ANSWER)
        special = {*tokenizer.all_special_ids, *tokenizer.get_added_vocab().values()}
        ids = tokenizer.encode(tail, add_special_tokens=False) if marked else []
        return next((int(i) for i in ids if i in special), fallback)

    return cast(int | None, _per_template(tokenizer, "turn_end", compute))


def stop_ids(tokenizer: Tok) -> list[int]:
    """The token ids generation stops on: the end of turn an answer is trained to end with,
    and EOS."""
    ids = [turn_end_id(tokenizer), tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _separator(tokenizer: Tok) -> str:
    """``<sep>`` when the vocabulary has it, else a newline (cached: get_vocab() is slow)."""
    sep = getattr(tokenizer, "_adaptd_sep", None)
    if sep is None:
        sep = SEP_TOKEN if SEP_TOKEN in tokenizer.get_vocab() else "\n"
        # A tokenizer that refuses attributes is simply not cached.
        with contextlib.suppress(AttributeError):
            tokenizer._adaptd_sep = sep  # type: ignore[attr-defined]
    return str(sep)


def prompt_ids(tokenizer: Tok, task: str, prompt: Prompt) -> list[int]:
    return list(tokenizer.encode(prompt_text(tokenizer, task, prompt), add_special_tokens=False))


@dataclass
class Seq:
    """One tokenized example. Tokens at index >= ``start`` are targets (the response and the
    end of turn).

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
    tokenizer: Tok, task: str, prompt: Prompt, response: str, *, task_index: int,
    negative: bool = False,
) -> Seq:
    """Prompt ids + response ids + end of turn (:func:`turn_end_id`; tokenized separately so
    they match generation); only the response and the end of turn are targets, never the
    prompt or a conversation's earlier turns."""
    head = prompt_ids(tokenizer, task, prompt)
    body = list(tokenizer.encode(response, add_special_tokens=False))
    end = turn_end_id(tokenizer)
    tail = [end] if end is not None else []
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
