"""Keyword-only CRUD functions over the SQL tables. Each takes a session; the caller owns the
transaction. They raise plain Python errors; HTTP errors are made only at the API edge."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from storage.models import (
    FINISHED_JOB_STATUSES,
    Adapter,
    AdapterVersion,
    Counter,
    FeedbackEvent,
    PolicyDecision,
    PolicyStateRow,
    RoutingEntry,
    RoutingRevision,
    Task,
    TrainingExample,
    TrainingJob,
    now,
)
from storage.suite import Suite

CounterKey = tuple[str, tuple[tuple[str, str], ...]]


def _insert(session: Session, table: Any) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_feedback(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert feedback rows, skipping ids already stored; return the ids really inserted.
    On PostgreSQL with COPY (:mod:`storage.bulk`)."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        from storage import bulk  # psycopg: loaded by the processes that talk to PostgreSQL

        return bulk.copy_feedback(session, rows=rows)
    table = FeedbackEvent.__table__  # type: ignore[attr-defined]
    stmt = _insert(session, table).on_conflict_do_nothing(index_elements=["id"])
    stmt = stmt.returning(table.c.id)
    result = session.execute(stmt, list(rows))
    return {row[0] for row in result}


def insert_examples(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert derived training examples; an (event_id, kind) pair is stored once.
    On PostgreSQL with COPY (:mod:`storage.bulk`)."""
    if not rows:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        from storage import bulk

        return bulk.copy_examples(session, rows=rows)
    table = TrainingExample.__table__  # type: ignore[attr-defined]
    stmt = _insert(session, table).on_conflict_do_nothing(index_elements=["event_id", "kind"])
    session.execute(stmt, list(rows))
    return len(rows)


def counter_key(name: str, labels: Mapping[str, str] | None = None) -> CounterKey:
    return name, tuple(sorted((labels or {}).items()))


def add_counters(session: Session, *, increments: Mapping[CounterKey, float]) -> None:
    """Add to exactly-once counters in the caller's transaction."""
    if not increments:
        return
    table = Counter.__table__  # type: ignore[attr-defined]
    rows = [
        {"name": name, "labels": json.dumps(dict(labels), sort_keys=True), "value": amount}
        for (name, labels), amount in sorted(increments.items())
    ]
    stmt = _insert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name", "labels"], set_={"value": table.c.value + stmt.excluded.value}
    )
    session.execute(stmt, rows)


def read_counters(session: Session) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for row in session.execute(select(Counter)).scalars():
        out.append((row.name, json.loads(row.labels), row.value))
    return out


def sync_suite(session: Session, *, suite: Suite) -> None:
    """Create Task and Adapter rows for a suite; never move a task another run has moved."""
    for adapter, members in suite.adapters.items():
        if session.get(Adapter, adapter) is None:
            session.add(Adapter(name=adapter, tasks=list(members)))
    for name, spec in suite.tasks.items():
        row = session.get(Task, name)
        if row is None:
            session.add(Task(name=name, risk=spec.risk, tone=spec.tone, adapter=suite.adapter_of(name)))
        else:
            row.risk, row.tone = spec.risk, spec.tone
    session.flush()


def list_tasks(session: Session) -> list[Task]:
    return list(session.execute(select(Task).order_by(col(Task.name))).scalars())


def buffered_counts(session: Session) -> dict[str, int]:
    """Examples per task not yet consumed by a training run (the per-task buffers)."""
    stmt = (
        select(col(TrainingExample.task), func.count())
        .where(col(TrainingExample.trained_in).is_(None))
        .where(TrainingExample.kind != "seed")
        .group_by(TrainingExample.task)
    )
    return {task: int(n) for task, n in session.execute(stmt)}


def newest_examples(session: Session, *, task: str, limit: int) -> list[TrainingExample]:
    """The newest ``limit`` training examples of ``task`` (every kind), newest first."""
    stmt = (select(TrainingExample).where(col(TrainingExample.task) == task)
            .order_by(col(TrainingExample.id).desc()).limit(limit))
    return list(session.execute(stmt).scalars())


def newest_responses(session: Session, *, task: str, kinds: Sequence[str], limit: int) -> list[str]:
    """The responses of the newest ``limit`` examples of ``task`` of ``kinds``, newest first
    (the column alone: the style detector reads nothing else)."""
    stmt = (select(col(TrainingExample.response)).where(col(TrainingExample.task) == task)
            .where(col(TrainingExample.kind).in_(list(kinds)))
            .order_by(col(TrainingExample.id).desc()).limit(limit))
    return [str(r) for r in session.execute(stmt).scalars() if r]


def routing_table(session: Session) -> tuple[int, dict[str, dict[str, Any]]]:
    """The current routing revision and routes (task -> adapter version)."""
    revision = session.execute(select(func.max(RoutingRevision.id))).scalar() or 0
    routes = {
        row.task: {"adapter": row.adapter, "version": row.version, "path": row.path,
                   "sha256": row.sha256,
                   "served_as": row.served_as or f"{row.adapter}-v{row.version}",
                   "prompt": row.prompt}
        for row in session.execute(select(RoutingEntry).order_by(col(RoutingEntry.task))).scalars()
    }
    return int(revision), routes


def set_routes(
    session: Session, *, routes: Mapping[str, Mapping[str, Any]], reason: str
) -> int:
    """Upsert routes and add a revision in the caller's transaction; return the revision.

    A route names ``adapter``, ``version``, ``path``, ``sha256`` and optionally ``served_as``
    (default ``<adapter>-v<N>``) and ``prompt`` (the prompt contract; a route without one
    keeps the task's current contract: same base, same task, same prompt)."""
    for task, route in routes.items():
        fields = dict(route)
        fields.setdefault("served_as", f"{fields['adapter']}-v{fields['version']}")
        row = session.get(RoutingEntry, task)
        if row is None:
            row = RoutingEntry(task=task, **fields)
        else:
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = now()
        session.add(row)
    rev = RoutingRevision(reason=reason)
    session.add(rev)
    session.flush()
    assert rev.id is not None
    return rev.id


def record_decision(session: Session, **fields: Any) -> PolicyDecision:
    decision = PolicyDecision(**fields)
    session.add(decision)
    session.flush()
    return decision


def list_decisions(session: Session, *, limit: int = 50) -> list[PolicyDecision]:
    stmt = select(PolicyDecision).order_by(col(PolicyDecision.id).desc()).limit(limit)
    return list(session.execute(stmt).scalars())


def create_job(
    session: Session, *, adapter: str, kind: str, params: Mapping[str, Any] | None = None,
    decision_id: int | None = None,
) -> TrainingJob:
    job = TrainingJob(adapter=adapter, kind=kind, params=dict(params or {}),
                      decision_id=decision_id)
    session.add(job)
    session.flush()
    return job


def active_jobs(session: Session) -> list[TrainingJob]:
    stmt = select(TrainingJob).where(col(TrainingJob.status).in_(["queued", "running"]))
    return list(session.execute(stmt).scalars())


def count_unaccounted_jobs(session: Session) -> int:
    """Finished training jobs the policy engine has not been told about yet (a tick tells it
    about promotions and rejections before it decides anything else)."""
    row = session.get(PolicyStateRow, 1)
    seen = int(((row.state or {}).get("meta") or {}).get("jobs_seen", 0)) if row else 0
    stmt = (select(func.count()).select_from(TrainingJob).where(col(TrainingJob.id) > seen)
            .where(col(TrainingJob.status).in_(FINISHED_JOB_STATUSES)))
    return int(session.execute(stmt).scalar() or 0)


def list_versions(session: Session, *, adapter: str | None = None) -> list[AdapterVersion]:
    """Adapter versions, newest first (optionally of one adapter)."""
    stmt = select(AdapterVersion).order_by(col(AdapterVersion.id).desc())
    if adapter is not None:
        stmt = stmt.where(col(AdapterVersion.adapter) == adapter)
    return list(session.execute(stmt).scalars())


def list_adapters(session: Session) -> list[Adapter]:
    return list(session.execute(select(Adapter).order_by(col(Adapter.name))).scalars())


def list_jobs(session: Session, *, limit: int = 50) -> list[TrainingJob]:
    stmt = select(TrainingJob).order_by(col(TrainingJob.id).desc()).limit(limit)
    return list(session.execute(stmt).scalars())


def count_feedback(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(FeedbackEvent)).scalar() or 0)


def count_unobserved(session: Session) -> int:
    """Stored events the policy engine has not fed to its detectors yet."""
    stmt = select(func.count()).select_from(FeedbackEvent).where(col(FeedbackEvent.observed).is_(False))
    return int(session.execute(stmt).scalar() or 0)


# Reads for the API and the CLI


def ping(session: Session) -> None:
    """Raise (a SQLAlchemyError) unless the database answers."""
    session.execute(text("SELECT 1"))


def get_adapter(session: Session, *, name: str) -> Adapter | None:
    return session.get(Adapter, name)


def latest_promoted_versions(session: Session) -> list[AdapterVersion]:
    """The newest promoted version of each adapter (what its metrics report), by adapter."""
    newest = (
        select(col(AdapterVersion.adapter).label("adapter"),
               func.max(col(AdapterVersion.version)).label("version"))
        .where(col(AdapterVersion.status) == "promoted")
        .group_by(col(AdapterVersion.adapter))
        .subquery()
    )
    stmt = (
        select(AdapterVersion)
        .join(newest, (col(AdapterVersion.adapter) == newest.c.adapter)
              & (col(AdapterVersion.version) == newest.c.version))
        .order_by(col(AdapterVersion.adapter))
    )
    return list(session.execute(stmt).scalars())


def finished_job_seconds(session: Session) -> dict[str, list[float]]:
    """Wall seconds of every finished training run that started, per adapter."""
    stmt = select(col(TrainingJob.adapter), col(TrainingJob.started_at),
                  col(TrainingJob.finished_at)).where(
        col(TrainingJob.finished_at).is_not(None), col(TrainingJob.started_at).is_not(None)
    ).order_by(col(TrainingJob.id))
    out: dict[str, list[float]] = {}
    for adapter, started, finished in session.execute(stmt):
        out.setdefault(adapter, []).append(max(0.0, finished - started))
    return out
