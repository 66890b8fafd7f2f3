"""Feedback event v1 (docs/contracts.md section 3): the schema the app posts and the stream carries."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
TaskName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Scalar = str | int | float | bool | None

MAX_PROMPT_BYTES = 8 * 1024
MAX_OUTPUT_BYTES = 16 * 1024
MAX_META_VALUES = 32


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


class FeedbackEventV1(BaseModel):
    """One piece of user feedback on one output. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    id: EventId
    task: TaskName
    adapter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")] | None = None
    prompt: str
    output: str
    verdict: Literal["accept", "reject", "edit"]
    rating: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    correction: str | None = None
    crosstalk_source: TaskName | None = None
    occurred_at: AwareDatetime
    meta: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, value: str) -> str:
        if _utf8_len(value) > MAX_PROMPT_BYTES:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
        return value

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
    def _edit_needs_correction(self) -> FeedbackEventV1:
        if self.verdict == "edit" and not self.correction:
            raise ValueError("verdict 'edit' requires a non-empty `correction`")
        if self.crosstalk_source is not None and self.crosstalk_source == self.task:
            raise ValueError("crosstalk_source must name another task")
        return self

    def to_stream(self) -> dict[str, Any]:
        """The compact JSON object carried on the stream (epoch seconds for time)."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["occurred_at"] = self.occurred_at.timestamp()
        return data
