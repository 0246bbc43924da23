"""Leases: who owns a queued job (a run or a sample job) right now.

A worker owns a job only while its lease is live; it renews the lease from a heartbeat.
Claims are single UPDATE statements, so two workers that got the same message (a
redelivery, a re-enqueue) cannot both win: the loser drops the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from store.tables import LeasedJob, utcnow

Job = type[LeasedJob]  # Run or SampleJob: the lease columns come from the LeasedJob mixin


@dataclass(frozen=True)
class Claim:
    won: bool
    attempts: int
    reason: str = ""


def claim(session: Session, job: Job, job_id: str, *, owner: str, lease_seconds: float) -> Claim:
    """Take a queued job, or a running one whose lease expired (its worker died)."""
    now = utcnow()
    result = session.execute(
        update(job)
        .where(
            job.id == job_id,
            or_(job.status == "queued", (job.status == "running") & (job.lease_expires_at < now)),
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=job.attempts + 1,
        )
    )
    attempts = session.scalar(select(job.attempts).where(job.id == job_id)) or 0
    return Claim(result.rowcount == 1, attempts)


def renew(session: Session, job: Job, job_id: str, *, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False means it was lost (expired and taken, or the job was deleted)."""
    result = session.execute(
        update(job)
        .where(job.id == job_id, job.lease_owner == owner, job.status.in_(("running", "cancelling")))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return result.rowcount == 1


def expired(session: Session, job: Job) -> list[str]:
    """Running jobs whose worker stopped renewing: back to queued (the caller re-enqueues).

    A job that was being cancelled when its worker died is the caller's business."""
    now = utcnow()
    ids = list(
        session.scalars(
            select(job.id).where(job.status == "running", job.lease_expires_at < now)
        )
    )
    if ids:
        session.execute(
            update(job)
            .where(job.id.in_(ids), job.lease_expires_at < now)
            .values(status="queued", lease_owner=None, enqueued_at=now)
        )
    return ids


def stale_queued(session: Session, job: Job, *, older_than: float) -> list[str]:
    """Jobs queued longer than `older_than` s: their message may be lost (a broker restart)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    ids = list(session.scalars(select(job.id).where(job.status == "queued", job.enqueued_at < cutoff)))
    if ids:
        session.execute(update(job).where(job.id.in_(ids)).values(enqueued_at=now))
    return ids
