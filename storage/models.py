"""SQL tables (sqlmodel). The schema is whole from the start; migrations live in
``storage/migrations`` (alembic).

Times are UTC epoch seconds (floats): portable across SQLite and PostgreSQL and cheap to
compare in the policy engine.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def now() -> float:
    return time.time()


class FeedbackEvent(SQLModel, table=True):
    """One feedback event (docs/contracts.md section 3). The unique id makes ingest idempotent."""

    __tablename__ = "feedback_event"
    # The one secondary index serves the policy tick's read (unobserved events in arrival
    # order) and holds only those rows, so the drain's COPY maintains two small indexes (this
    # and the primary key) rather than four full ones; ``bench/drain.py`` measures the drain.
    __table_args__ = (
        Index("ix_feedback_event_unobserved", "received_at", "id",
              postgresql_where=text("observed IS false"), sqlite_where=text("observed IS 0")),
    )
    id: str = Field(primary_key=True, max_length=128)
    task: str = Field(max_length=64)
    adapter: str | None = Field(default=None, max_length=128)
    # With ``messages`` (a conversation), ``prompt`` holds its last user turn.
    prompt: str
    messages: list[dict[str, str]] | None = Field(default=None, sa_column=Column(JSON))
    output: str
    verdict: str = Field(max_length=8)
    rating: float | None = None
    correction: str | None = None
    crosstalk_source: str | None = Field(default=None, max_length=64)
    occurred_at: float
    received_at: float = Field(default_factory=now)
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Set once the policy engine has fed this event to its detectors (same transaction as
    # the engine's state), so every event is observed exactly once.
    observed: bool = False


class TrainingExample(SQLModel, table=True):
    """A training example derived from seed data or feedback.

    kind: ``seed`` | ``accepted`` (an accepted output) | ``correction`` (the user's edit, the
    most valuable) | ``negative`` (a rejected output, kept with its crosstalk source).
    ``trained_in`` is the adapter version that first consumed it (NULL = still buffered).
    """

    __tablename__ = "training_example"
    __table_args__ = (UniqueConstraint("event_id", "kind", name="uq_example_event_kind"),)
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=16)
    prompt: str
    # The app's conversation (chat format, ending with a user turn) when the event had one;
    # training renders it with the base model's chat template instead of ``prompt``.
    messages: list[dict[str, str]] | None = Field(default=None, sa_column=Column(JSON))
    response: str
    negative: str | None = None
    crosstalk_source: str | None = Field(default=None, max_length=64)
    event_id: str | None = Field(default=None, max_length=128)
    created_at: float = Field(default_factory=now)
    trained_in: str | None = Field(default=None, max_length=160, index=True)


class Counter(SQLModel, table=True):
    """Exactly-once Prometheus counters, bumped in the same transaction as the rows they count.

    ``labels`` is a canonical JSON object string so (name, labels) is a primary key.
    """

    __tablename__ = "counter"
    name: str = Field(primary_key=True, max_length=128)
    labels: str = Field(primary_key=True, max_length=512)
    value: float = 0.0


class Task(SQLModel, table=True):
    """A configured task and its live state as the policy engine last saw it."""

    __tablename__ = "task"
    name: str = Field(primary_key=True, max_length=64)
    risk: str = Field(max_length=8)
    tone: str = Field(default="neutral", max_length=32)
    adapter: str = Field(max_length=64)
    ratio: float = 0.0
    quality: float | None = None
    crosstalk_rate: float | None = None
    crosstalk_source: str | None = Field(default=None, max_length=64)
    degraded: bool = False
    updated_at: float = Field(default_factory=now)


class Adapter(SQLModel, table=True):
    """An adapter (shared or isolated) with its current task ratios."""

    __tablename__ = "adapter"
    name: str = Field(primary_key=True, max_length=64)
    tasks: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    ratios: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON))
    ratios_version: int = 0
    parent: str | None = Field(default=None, max_length=64)
    status: str = Field(default="active", max_length=16)  # active | retired
    created_at: float = Field(default_factory=now)


class AdapterVersion(SQLModel, table=True):
    """An immutable adapter version on disk (docs/contracts.md section 7).

    status: ``candidate`` | ``promoted`` | ``rejected`` | ``rolled_back``.
    """

    __tablename__ = "adapter_version"
    __table_args__ = (UniqueConstraint("adapter", "version", name="uq_adapter_version"),)
    id: int | None = Field(default=None, primary_key=True)
    adapter: str = Field(max_length=64, index=True)
    version: int
    path: str
    sha256: str = Field(max_length=64)
    status: str = Field(default="candidate", max_length=16)
    parent_version: int | None = None
    job_id: int | None = None
    ratios: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON))
    eval: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    reason: str = ""
    created_at: float = Field(default_factory=now)
    promoted_at: float | None = None


# A job in one of these has ended; the policy engine accounts it once (``jobs_seen``).
FINISHED_JOB_STATUSES = ("succeeded", "rejected", "failed")


class TrainingJob(SQLModel, table=True):
    """A training job with a lease: a killed worker's job is picked up again.

    status: ``queued`` | ``running`` | ``succeeded`` | ``rejected`` | ``failed``.
    A job never promotes twice: ``result_version`` is set in the promoting transaction.
    """

    __tablename__ = "training_job"
    __table_args__ = (Index("ix_training_job_status", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    adapter: str = Field(max_length=64)
    kind: str = Field(default="retrain", max_length=16)  # retrain | rebalance | fork | merge
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default="queued", max_length=16)
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: float | None = None
    heartbeat_at: float | None = None
    result_version: int | None = None
    error: str | None = None
    decision_id: int | None = None
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None


class PolicyDecision(SQLModel, table=True):
    """Every decision with its reason and the signal values behind it."""

    __tablename__ = "policy_decision"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now, index=True)
    action: str = Field(max_length=16)
    task: str | None = Field(default=None, max_length=64)
    adapter: str | None = Field(default=None, max_length=64)
    reason: str
    signals: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default="applied", max_length=16)  # applied | proposed | approved
    origin: str = Field(default="policy", max_length=16)  # policy | operator
    at_event: int | None = None


class PolicyStateRow(SQLModel, table=True):
    """The policy engine's state as JSON (detectors, windows, ratios, cool-downs)."""

    __tablename__ = "policy_state"
    id: int = Field(default=1, primary_key=True)
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    updated_at: float = Field(default_factory=now)


class RoutingEntry(SQLModel, table=True):
    """task -> adapter version the app must serve.

    ``served_as`` is the ``model`` name the app sends to the serving engine
    (``<adapter>-v<N>``); ``prompt`` is the prompt contract the version was trained with
    (docs/contracts.md section 11), so an app builds exactly the tokens training used.
    """

    __tablename__ = "routing_entry"
    task: str = Field(primary_key=True, max_length=64)
    adapter: str = Field(max_length=64)
    version: int
    path: str
    sha256: str = Field(max_length=64)
    served_as: str = Field(default="", max_length=80)
    prompt: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    updated_at: float = Field(default_factory=now)


class RoutingRevision(SQLModel, table=True):
    """One row per published routing table; the newest id is the revision."""

    __tablename__ = "routing_revision"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now)
    reason: str = ""


class ServingRollout(SQLModel, table=True):
    """A promoted version on its way to the serving replicas (two-step promotion).

    status: ``pending`` (promoted, not yet listed by every reachable replica) | ``routed`` |
    ``refused`` (a replica refused it; the route stayed on the version it serves) |
    ``superseded`` (a newer promotion or a rollback of the adapter came first).
    ``requested_at`` -> ``finished_at`` of a routed rollout is the promotion-to-served time.
    """

    __tablename__ = "serving_rollout"
    __table_args__ = (Index("ix_serving_rollout_status", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    adapter: str = Field(max_length=64)
    version: int
    path: str
    sha256: str = Field(max_length=64)
    served_as: str = Field(max_length=80)
    tasks: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    prompts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default="pending", max_length=16)
    reason: str = ""
    requested_at: float = Field(default_factory=now)
    finished_at: float | None = None


class ServingHeld(SQLModel, table=True):
    """What the serving sync last saw on a replica, one row per (replica, served name).

    state: ``loaded`` (listed by the replica) | ``refused`` (its load was refused; never
    retried on that replica). ``unwanted_since``: when a loaded name stopped being wanted
    (it is unloaded after the grace period).
    """

    __tablename__ = "serving_held"
    replica: str = Field(primary_key=True, max_length=256)
    served_as: str = Field(primary_key=True, max_length=80)
    adapter: str = Field(max_length=64)
    version: int
    state: str = Field(default="loaded", max_length=16)
    reason: str = ""
    unwanted_since: float | None = None
    updated_at: float = Field(default_factory=now)
