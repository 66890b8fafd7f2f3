"""Job leases: an atomic claim and a heartbeat thread that keeps the lease alive.

A job row is claimable when it is ``queued``, or ``running`` with an expired lease (its
worker died). The claim is one conditional UPDATE, so of two workers racing for a job
exactly one wins. The heartbeat extends the lease only while this worker still owns it; if
the row was taken over (the lease expired while we were stuck), ``lost`` is set and the
training loop stops at its next step.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import TrainingJob

log = logging.getLogger("adaptd.training")


def claim_job(session: Session, job_id: int, worker_id: str, lease_seconds: int) -> bool:
    """Take the job if it is queued or its lease expired; commit; True if we got it."""
    now = time.time()
    stmt = (
        update(TrainingJob)
        .where(col(TrainingJob.id) == job_id)
        .where(
            or_(
                col(TrainingJob.status) == "queued",
                (col(TrainingJob.status) == "running")
                & (col(TrainingJob.lease_until).is_(None) | (col(TrainingJob.lease_until) < now)),
            )
        )
        .values(
            status="running",
            lease_owner=worker_id,
            lease_until=now + lease_seconds,
            heartbeat_at=now,
            attempts=col(TrainingJob.attempts) + 1,
            started_at=now,
            error=None,
        )
    )
    result = session.execute(stmt)
    session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def still_ours(job_id: int, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    """WHERE clauses of an update that only applies while ``worker_id`` runs the job (a
    worker whose lease expired and was taken over must not touch the row any more)."""
    return (col(TrainingJob.id) == job_id, col(TrainingJob.lease_owner) == worker_id,
            col(TrainingJob.status) == "running")


def extend_lease(engine: Engine, job_id: int, worker_id: str, lease_seconds: int) -> bool:
    """Push the lease forward if we still own the running job."""
    now = time.time()
    with Session(engine) as session:
        result = session.execute(
            update(TrainingJob)
            .where(*still_ours(job_id, worker_id))
            .values(lease_until=now + lease_seconds, heartbeat_at=now)
        )
        session.commit()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


class Heartbeat:
    """Extends the lease every ``lease_seconds / 3`` seconds in a daemon thread."""

    def __init__(self, engine: Engine, job_id: int, worker_id: str, lease_seconds: int) -> None:
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.5)
        while not self._stop.wait(interval):
            try:
                if not extend_lease(self.engine, self.job_id, self.worker_id, self.lease_seconds):
                    log.warning("job %s: lease lost to another worker", self.job_id)
                    self.lost.set()
                    return
            except Exception:  # a DB hiccup: try again next beat
                log.exception("job %s: heartbeat failed", self.job_id)
