"""Training jobs, versions, feedback and decision rows as the policy tick reads and marks them.

Keyword-only functions taking a session, like ``storage.crud``; the tick owns the
transaction (everything a tick changes commits at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from storage.models import (
    FINISHED_JOB_STATUSES,
    AdapterVersion,
    FeedbackEvent,
    PolicyDecision,
    TrainingExample,
    TrainingJob,
)

OPEN_JOB_STATUSES = ("queued", "running")
UNPROMOTED_JOB_STATUSES = ("rejected", "failed")


def promoted_adapters(session: Session) -> set[str]:
    """Adapters with at least one promoted version."""
    stmt = (select(col(AdapterVersion.adapter)).where(col(AdapterVersion.status) == "promoted")
            .distinct())
    return {str(a) for a in session.execute(stmt).scalars()}


def failed_tries(session: Session, *, key: str, value: Any = True) -> dict[str, int]:
    """Per adapter, its jobs with ``params[key] == value`` (first versions: ``bootstrap``;
    retrains after a base rebuild: ``rebuild`` = the build) that ended without a promotion."""
    stmt = select(TrainingJob).where(col(TrainingJob.status).in_(UNPROMOTED_JOB_STATUSES))
    out: dict[str, int] = {}
    for job in session.execute(stmt).scalars():
        if (job.params or {}).get(key) == value:
            out[job.adapter] = out.get(job.adapter, 0) + 1
    return out


def roll_back_versions(session: Session, *, adapter: str, after: int) -> None:
    """Mark ``adapter``'s promoted versions newer than ``after`` rolled back."""
    stmt = select(AdapterVersion).where(
        col(AdapterVersion.adapter) == adapter, col(AdapterVersion.status) == "promoted",
        col(AdapterVersion.version) > after)
    for row in session.execute(stmt).scalars():
        row.status = "rolled_back"


def requested_decisions(session: Session) -> list[PolicyDecision]:
    """Operator overrides the API recorded and no tick applied yet, oldest first."""
    stmt = (select(PolicyDecision).where(col(PolicyDecision.status) == "requested")
            .order_by(col(PolicyDecision.id)))
    return list(session.execute(stmt).scalars())


def stale_jobs(session: Session, *, now: float, queued_after_s: float) -> list[int]:
    """Queued jobs nobody picked up within ``queued_after_s``, and running jobs whose lease
    expired."""
    stmt = select(TrainingJob).where(col(TrainingJob.status).in_(OPEN_JOB_STATUSES))
    return [int(j.id) for j in session.execute(stmt).scalars() if j.id is not None and (
        (j.status == "queued" and now - j.created_at > queued_after_s and j.lease_until is None)
        or (j.status == "running" and (j.lease_until or 0) < now))]


def finished_jobs_after(session: Session, *, seen: int) -> list[TrainingJob]:
    """Finished jobs with an id above ``seen``, in id order."""
    stmt = (select(TrainingJob).where(col(TrainingJob.id) > seen)
            .where(col(TrainingJob.status).in_(FINISHED_JOB_STATUSES))
            .order_by(col(TrainingJob.id)))
    return list(session.execute(stmt).scalars())


def open_jobs_between(session: Session, *, above: int, below: int) -> int:
    """Queued or running jobs with ``above < id < below``."""
    stmt = (select(func.count()).select_from(TrainingJob)
            .where(col(TrainingJob.id) < below, col(TrainingJob.id) > above)
            .where(col(TrainingJob.status).in_(OPEN_JOB_STATUSES)))
    return int(session.execute(stmt).scalar() or 0)


def feedback_example_counts(session: Session) -> dict[str, int]:
    """Usable training examples from feedback (accepted outputs, corrections) per task."""
    stmt = (select(col(TrainingExample.task), func.count())
            .where(col(TrainingExample.kind).in_(["accepted", "correction"]))
            .group_by(col(TrainingExample.task)))
    return {t: int(n) for t, n in session.execute(stmt)}


def unobserved_events_query(*, limit: int) -> SelectOfScalar[FeedbackEvent]:
    """Its predicate is the one of the partial index ``ix_feedback_event_unobserved``."""
    return (select(FeedbackEvent).where(col(FeedbackEvent.observed).is_(False))
            .order_by(col(FeedbackEvent.received_at), col(FeedbackEvent.id)).limit(limit))


def unobserved_events(session: Session, *, limit: int) -> list[FeedbackEvent]:
    """Stored feedback not yet fed to the engine, in arrival order."""
    return list(session.execute(unobserved_events_query(limit=limit)).scalars())


def mark_observed(session: Session, *, ids: Sequence[str]) -> None:
    for i in range(0, len(ids), 500):
        session.execute(update(FeedbackEvent).where(col(FeedbackEvent.id).in_(ids[i:i + 500]))
                        .values(observed=True))
