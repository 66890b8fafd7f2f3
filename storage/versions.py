"""Reads of adapter version rows: one version, and a training job's numbering and adoption.

Keyword-only functions taking a session, like ``storage.crud``; the caller owns the
transaction. A version's files live in ``storage.artifacts``; the tick's marks of versions
(rollback) are in ``storage.tick``.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from storage.models import AdapterVersion


def get_version(session: Session, *, adapter: str, version: int | None) -> AdapterVersion | None:
    """The row of ``adapter`` version ``version``, if recorded."""
    stmt = select(AdapterVersion).where(col(AdapterVersion.adapter) == adapter,
                                        col(AdapterVersion.version) == version)
    return session.execute(stmt).scalars().first()


def job_candidates(session: Session, *, adapter: str, job_id: int) -> list[AdapterVersion]:
    """The versions of ``adapter`` that job ``job_id`` recorded and nobody judged yet."""
    stmt = select(AdapterVersion).where(col(AdapterVersion.adapter) == adapter,
                                        col(AdapterVersion.job_id) == job_id,
                                        col(AdapterVersion.status) == "candidate")
    return list(session.execute(stmt).scalars())


def recorded_versions(session: Session, *, adapter: str) -> set[int]:
    """The version numbers of ``adapter`` with a row, whatever their status."""
    stmt = select(col(AdapterVersion.version)).where(col(AdapterVersion.adapter) == adapter)
    return {int(v) for v in session.execute(stmt).scalars()}


def highest_version(session: Session, *, adapter: str) -> int:
    """The highest version number of ``adapter`` with a row (0: none yet)."""
    stmt = select(func.max(col(AdapterVersion.version))).where(
        col(AdapterVersion.adapter) == adapter)
    return int(session.execute(stmt).scalar() or 0)
