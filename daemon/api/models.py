"""Response models of the HTTP API: each answer's JSON, so ``/openapi.json`` describes it.

These are the public contract: field names, types and which fields may be absent or null stay
as they are. Free-form objects (decision signals, job params, version evaluations) are
``dict[str, Any]`` because their content is owned by the policy engine and the trainer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


def _absent(value: Any) -> bool:
    return value is None


# --- errors ---------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str] = Field(description="where in the event the error is (field names)")
    msg: str
    type: str


class EventErrors(BaseModel):
    index: int = Field(description="position of the event in the request (0 for one event)")
    id: str | None = Field(description="the event's id when it had a usable one")
    errors: list[FieldError] = Field(description="at most 20 errors per event")


class Problem(BaseModel):
    """Every refusal made by adaptd itself: a clear message, and for a batch with bad
    events one entry per bad event (nothing of that batch is stored)."""

    detail: str
    errors: list[EventErrors] | None = Field(
        default=None, exclude_if=_absent,
        description="present on 422 for a batch with bad events: one entry per bad event")


# --- feedback -------------------------------------------------------------------------------


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events whose id was already stored (no-ops)")
    replay: int | None = Field(
        default=None, exclude_if=_absent,
        description="1 when this webhook-id was delivered before: the request is a no-op")


# --- routing --------------------------------------------------------------------------------


class Route(BaseModel):
    """The adapter version the app must serve for one task."""

    adapter: str
    version: int
    path: str = Field(description="the version's directory")
    sha256: str = Field(description="digest of the version's weights")
    # Absent from the answer when the routing table does not carry them.
    served_as: str | None = Field(
        default=None,
        description="the `model` name the app sends to the serving engine (<adapter>-v<N>)")
    prompt: dict[str, Any] | None = Field(
        default=None,
        description="the prompt contract the version was trained with: how the task is "
                    "marked (chat-template system text or user prefix, or the literal tag and "
                    "separator) and the token ids generation stops on")


class RoutingTable(BaseModel):
    revision: int = Field(description="grows by one with every published change; 0 = none yet")
    routes: dict[str, Route] = Field(description="task -> route")


# --- tasks, decisions, overrides ------------------------------------------------------------


class TaskState(BaseModel):
    risk: str
    tone: str
    adapter: str = Field(description="the adapter serving the task")
    ratio: float = Field(description="the task's share of its adapter's training mix")
    quality: float | None = Field(description="rolling acceptance; null before any feedback")
    crosstalk_rate: float | None
    crosstalk_source: str | None = Field(description="the task whose style leaks in, if any")
    degraded: bool
    buffered_examples: int = Field(description="examples not yet consumed by a training run")


class Tasks(BaseModel):
    tasks: dict[str, TaskState] = Field(description="task name -> state")


class Decision(BaseModel):
    id: int
    at: float = Field(description="epoch seconds")
    action: str
    task: str | None
    adapter: str | None
    reason: str
    signals: dict[str, Any] = Field(description="the signal values behind the decision")
    status: str = Field(description="applied | proposed (awaits approval) | requested "
                        "(an operator override the next policy tick applies)")
    origin: str = Field(description="policy | operator")
    at_event: int | None = Field(description="the policy clock when it was made")


class Decisions(BaseModel):
    decisions: list[Decision] = Field(description="newest first")


class OverrideAccepted(BaseModel):
    decision: int = Field(description="id of the recorded decision")
    action: str
    task: str
    status: str = Field(description="always `requested`: the next policy tick applies it")


# --- status, adapters, jobs -----------------------------------------------------------------


class Status(BaseModel):
    events: int = Field(description="feedback events stored")
    unobserved: int = Field(description="stored events the policy engine has not seen yet")
    jobs_active: int = Field(description="training jobs queued or running")
    jobs_unaccounted: int = Field(
        description="finished jobs the policy engine has not accounted yet")
    routing_revision: int
    ingest_lag: int | None = Field(description="stream entries not yet drained; null if "
                                               "Redis is unavailable")


class VersionInfo(BaseModel):
    id: int
    adapter: str
    version: int
    sha256: str
    status: str = Field(description="candidate | promoted | rejected | rolled_back")
    parent_version: int | None
    job_id: int | None
    ratios: dict[str, float]
    eval: dict[str, Any] = Field(description="the trainer's per-task evaluation")
    reason: str
    created_at: float
    promoted_at: float | None


class AdapterInfo(BaseModel):
    tasks: list[str]
    ratios: dict[str, float]
    status: str = Field(description="active | retired | unknown (versions without a row)")
    parent: str | None = Field(description="the adapter it was forked from")
    versions: list[VersionInfo] = Field(description="newest first")


class Adapters(BaseModel):
    adapters: dict[str, AdapterInfo]


class Job(BaseModel):
    id: int
    adapter: str
    kind: str = Field(description="retrain | rebalance | fork | merge")
    params: dict[str, Any]
    status: str = Field(description="queued | running | succeeded | rejected | failed")
    attempts: int
    lease_until: float | None
    heartbeat_at: float | None
    result_version: int | None
    error: str | None
    decision_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class Jobs(BaseModel):
    jobs: list[Job] = Field(description="newest first")


# --- health ---------------------------------------------------------------------------------


class Health(BaseModel):
    status: str = Field(description="always `ok`")


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `not ready`")
    redis: str = Field(description="`ok` or `unavailable: <error type>`")
    database: str = Field(description="`ok` or `unavailable: <error type>`")
