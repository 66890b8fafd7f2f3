"""Persistence of the serving sync (docs/contracts.md section 11): rollouts (promoted versions waiting to
be routed) and what each replica holds. Keyword-only functions taking a session; the caller
owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import Session, col, select

from storage.crud import set_routes
from storage.models import AdapterVersion, ServingHeld, ServingRollout, now


def add_rollout(session: Session, *, version: AdapterVersion, tasks: Sequence[str],
                prompts: Mapping[str, Any], at: float) -> ServingRollout:
    """A promoted version waits to be routed to ``tasks``. An older pending rollout of the
    same adapter, or one for any of these tasks, is superseded: only the newest is routed."""
    for old in pending_rollouts(session):
        if old.adapter == version.adapter or set(old.tasks) & set(tasks):
            old.status, old.finished_at = "superseded", at
            old.reason = f"superseded by {version.adapter}@{version.version}"
            session.add(old)
    row = ServingRollout(adapter=version.adapter, version=version.version, path=version.path,
                         sha256=version.sha256, served_as=f"{version.adapter}-v{version.version}",
                         tasks=list(tasks), prompts=dict(prompts), requested_at=at)
    session.add(row)
    session.flush()
    return row


def supersede_pending(session: Session, *, adapter: str, reason: str) -> int:
    """Drop the adapter's pending rollouts (a rollback routes an older version now)."""
    n = 0
    for row in pending_rollouts(session):
        if row.adapter == adapter:
            row.status, row.reason, row.finished_at = "superseded", reason, now()
            session.add(row)
            n += 1
    return n


def pending_rollouts(session: Session) -> list[ServingRollout]:
    stmt = (select(ServingRollout).where(col(ServingRollout.status) == "pending")
            .order_by(col(ServingRollout.id)))
    return list(session.execute(stmt).scalars())


def list_rollouts(session: Session, *, limit: int = 100) -> list[ServingRollout]:
    stmt = select(ServingRollout).order_by(col(ServingRollout.id).desc()).limit(limit)
    return list(session.execute(stmt).scalars())


def finish_rollout(session: Session, *, rollout: ServingRollout, status: str, reason: str,
                   at: float) -> None:
    rollout.status, rollout.reason, rollout.finished_at = status, reason[:2000], at
    session.add(rollout)


def promoted_versions(session: Session) -> list[AdapterVersion]:
    stmt = select(AdapterVersion).where(col(AdapterVersion.status) == "promoted")
    return list(session.execute(stmt).scalars())


def held(session: Session, *, replica: str | None = None) -> list[ServingHeld]:
    stmt = select(ServingHeld).order_by(col(ServingHeld.replica), col(ServingHeld.served_as))
    if replica is not None:
        stmt = stmt.where(col(ServingHeld.replica) == replica)
    return list(session.execute(stmt).scalars())


def replace_held(session: Session, *, replica: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Make the replica's rows exactly ``rows`` (each: served_as, adapter, version, state,
    reason, unwanted_since)."""
    keep = {str(r["served_as"]) for r in rows}
    for old in held(session, replica=replica):
        if old.served_as not in keep:
            session.delete(old)
    at = now()
    for r in rows:
        row = session.get(ServingHeld, (replica, r["served_as"]))
        if row is None:
            row = ServingHeld(replica=replica, served_as=r["served_as"], adapter=r["adapter"],
                              version=r["version"])
        row.state = str(r.get("state", "loaded"))
        row.reason = str(r.get("reason", ""))[:2000]
        row.unwanted_since = r.get("unwanted_since")
        row.updated_at = at
        session.add(row)
    session.flush()


def forget_replicas(session: Session, *, keep: Sequence[str]) -> None:
    """Remove rows of replicas no longer configured (their gauges would lie)."""
    for row in held(session):
        if row.replica not in keep:
            session.delete(row)


def refused_names(session: Session) -> set[str]:
    """Served names a replica refused (a refused version is never wanted again)."""
    names = {r.served_as for r in held(session) if r.state == "refused"}
    stmt = select(ServingRollout.served_as).where(col(ServingRollout.status) == "refused")
    names.update(str(n) for n in session.execute(stmt).scalars())
    return names


def routed_durations(session: Session) -> list[float]:
    """Promotion-to-served seconds of every routed rollout."""
    stmt = select(col(ServingRollout.requested_at), col(ServingRollout.finished_at)).where(
        col(ServingRollout.status) == "routed", col(ServingRollout.finished_at).is_not(None))
    return [max(0.0, float(f) - float(r)) for r, f in session.execute(stmt)]


def rollback_routes(session: Session, *, target: AdapterVersion, tasks: Sequence[str]) -> int:
    """Route ``tasks`` back to ``target`` now (it is kept loaded as the adapter's last good
    version, so nothing loads on this path) and drop the adapter's pending rollouts."""
    supersede_pending(session, adapter=target.adapter,
                      reason=f"rollback {target.adapter} to v{target.version}")
    return set_routes(session, reason=f"rollback {target.adapter} to v{target.version}", routes={
        t: {"adapter": target.adapter, "version": target.version, "path": target.path,
            "sha256": target.sha256} for t in tasks})


def adapter_names(session: Session) -> set[str]:
    """Every adapter adaptd has a version of (the names the serving sync manages)."""
    stmt = select(AdapterVersion.adapter).distinct()
    return {str(n) for n in session.execute(stmt).scalars()}
