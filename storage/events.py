"""Feedback event v1 (docs/contracts.md section 3): the schema the app posts and the stream carries.

Two backward-compatible extensions: ``"verdict": "unrated"`` (an answer the app served that no
user judged) and ``messages`` instead of ``prompt`` (the conversation the model answered, in
OpenAI chat format, ending with a user turn)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_serializer,
    field_validator,
    model_validator,
)

EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
TaskName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Scalar = str | int | float | bool | None

MAX_PROMPT_BYTES = 8 * 1024
MAX_OUTPUT_BYTES = 16 * 1024
MAX_META_VALUES = 32
MAX_TURNS = 64

# Serialization context of the stream form: ``occurred_at`` as epoch seconds.
_STREAM = {"stream": True}

Role = Literal["system", "user", "assistant"]


def _utf8_len(text: str) -> int:
    """UTF-8 size of ``text``; refuses what no store can keep: lone surrogates and NUL."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate such as \\ud800)"
                         ) from None
    if "\x00" in text:
        raise ValueError("text must not contain NUL (\\u0000)")
    return size


class ChatMessage(BaseModel):
    """One turn of a conversation (OpenAI chat format, text content only)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    role: Role
    content: str


def check_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The conversation rules shared by events and training examples: 1..MAX_TURNS turns,
    a system turn only first, ending with a user turn, the contents together within
    MAX_PROMPT_BYTES (the same budget as a plain ``prompt``)."""
    if not messages:
        raise ValueError("messages holds no turns")
    if len(messages) > MAX_TURNS:
        raise ValueError(f"messages holds more than {MAX_TURNS} turns")
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            raise ValueError(f"messages[{i}]: a system turn may only come first")
    if messages[-1].role != "user":
        raise ValueError("messages must end with a user turn (the output answers it)")
    if sum(_utf8_len(m.content) for m in messages) > MAX_PROMPT_BYTES:
        raise ValueError(f"messages are longer than {MAX_PROMPT_BYTES} bytes together")
    return messages


class FeedbackEventV1(BaseModel):
    """One piece of user feedback on one output. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    id: EventId
    task: TaskName
    adapter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")] | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    output: str
    verdict: Literal["accept", "reject", "edit", "unrated"]
    rating: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    correction: str | None = None
    crosstalk_source: TaskName | None = None
    occurred_at: AwareDatetime
    meta: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, value: str | None) -> str | None:
        if value is not None and _utf8_len(value) > MAX_PROMPT_BYTES:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
        return value

    @field_validator("messages")
    @classmethod
    def _messages_shape(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return None if value is None else check_messages(value)

    @field_validator("output", "correction")
    @classmethod
    def _output_size(cls, value: str | None) -> str | None:
        if value is not None and _utf8_len(value) > MAX_OUTPUT_BYTES:
            raise ValueError(f"text is longer than {MAX_OUTPUT_BYTES} bytes")
        return value

    @field_validator("meta")
    @classmethod
    def _meta_size(cls, value: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        if value is not None and len(value) > MAX_META_VALUES:
            raise ValueError(f"meta holds more than {MAX_META_VALUES} values")
        for item in (value or {}).values():
            if isinstance(item, str):
                _utf8_len(item)
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError("meta values must be finite numbers (no NaN or Infinity)")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _sane_time(cls, value: datetime) -> datetime:
        if not 2000 <= value.year <= 2200:
            raise ValueError("occurred_at is outside the years 2000..2200")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackEventV1:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        if self.verdict == "unrated" and (self.rating is not None or self.correction
                                          or self.crosstalk_source):
            raise ValueError("an unrated answer carries no `rating`, `correction` or "
                             "`crosstalk_source` (nobody judged it)")
        if self.verdict == "edit" and not self.correction:
            raise ValueError("verdict 'edit' requires a non-empty `correction`")
        if self.crosstalk_source is not None and self.crosstalk_source == self.task:
            raise ValueError("crosstalk_source must name another task")
        return self

    @field_serializer("occurred_at", mode="wrap")
    def _stream_time(self, value: datetime, handler: SerializerFunctionWrapHandler,
                     info: SerializationInfo) -> Any:
        if info.context is _STREAM:
            return value.timestamp()
        return handler(value)

    def to_stream(self) -> dict[str, Any]:
        """The compact JSON object carried on the stream (epoch seconds for time)."""
        return self.model_dump(mode="json", exclude_none=True, context=_STREAM)

    def stream_json(self) -> bytes:
        """``to_stream()`` as compact UTF-8 JSON, serialised by pydantic-core in one call
        (what the API appends; the ingest bench measures it)."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True, context=_STREAM)
