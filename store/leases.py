"""Leases: who owns a queued job (a run or a sample job) right now, fenced by an epoch.

A worker owns a job only while its lease is live; it renews the lease from a heartbeat.
Claims are single UPDATE statements, so two workers that got the same message (a
redelivery, a re-enqueue) cannot both win: the loser drops the message.

Every claim increments the job's `lease_epoch` (a fencing token). A worker's writes name
the (owner, epoch) it claimed with and are conditional on them, so a worker that lost its
lease (frozen past it, partitioned) and wakes up after a take-over writes nothing: its
write is rejected with `LeaseLost`. Lease times come from the database's clock, never a
worker's own, so one machine's fast clock cannot expire everybody else's leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, DateTime, and_, func, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from store.tables import LeasedJob, utcnow

Job = type[LeasedJob]  # Run or SampleJob: the lease columns come from the LeasedJob mixin
HELD = ("running", "cancelling")  # the statuses in which a job still belongs to its worker


class LeaseLost(Exception):
    """The job's lease belongs to another claim now (or the job ended): stop working on it."""


@dataclass(frozen=True)
class Lease:
    """What a worker names on every write: itself and the epoch its claim got."""

    owner: str
    epoch: int


@dataclass(frozen=True)
class Claim:
    won: bool
    attempts: int
    epoch: int = 0
    reason: str = ""


class db_time(FunctionElement):
    """The database's clock plus `seconds`: `now()` on PostgreSQL, strftime('now') on SQLite."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "db_time"


@compiles(db_time)
def _db_time_default(element: db_time, compiler: Any, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(db_time, "sqlite")
def _db_time_sqlite(element: db_time, compiler: Any, **kw: Any) -> str:
    # The same text layout SQLAlchemy stores SQLite datetimes in, so comparisons hold.
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({compiler.process(element.clauses, **kw)}) || ' seconds')"


def db_now() -> db_time:
    return db_time(0.0)


def claim(session: Session, job: Job, job_id: str, *, owner: str, lease_seconds: float) -> Claim:
    """Take a queued job, or a running one whose lease expired (its worker died); a new epoch."""
    result = session.execute(
        update(job)
        .where(
            job.id == job_id,
            or_(job.status == "queued", (job.status == "running") & (job.lease_expires_at < db_now())),
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=db_time(float(lease_seconds)),
            attempts=job.attempts + 1,
            lease_epoch=job.lease_epoch + 1,
        )
    )
    row = session.execute(select(job.attempts, job.lease_epoch).where(job.id == job_id)).first()
    attempts, epoch = row if row is not None else (0, 0)
    return Claim(result.rowcount == 1, attempts, epoch)


def held_by(job: Job, lease: Lease) -> ColumnElement[bool]:
    """The WHERE clause of every fenced write: the job is still `lease`'s."""
    return and_(job.lease_owner == lease.owner, job.lease_epoch == lease.epoch, job.status.in_(HELD))


def _held(job: Job, job_id: str, lease: Lease):
    return update(job).where(job.id == job_id, held_by(job, lease))


def renew(session: Session, job: Job, job_id: str, *, lease: Lease, lease_seconds: float) -> bool:
    """Extend the lease; False means it was lost (expired and taken, or the job ended or was deleted)."""
    result = session.execute(_held(job, job_id, lease).values(lease_expires_at=db_time(float(lease_seconds))))
    return result.rowcount == 1


def fence(session: Session, job: Job, job_id: str, lease: Lease) -> None:
    """Raise LeaseLost unless `lease` still holds the job; call it before a write in the same
    transaction. The no-op UPDATE locks the row, so a concurrent claim waits for this
    transaction (PostgreSQL) or is serialised with it (SQLite): no take-over slips in between."""
    if session.execute(_held(job, job_id, lease).values(lease_epoch=job.lease_epoch)).rowcount != 1:
        raise LeaseLost(f"{job.__tablename__} {job_id}: lease {lease.owner} epoch {lease.epoch} lost")


def release(session: Session, job: Job, job_id: str, *, lease: Lease, **values: Any) -> bool:
    """The worker's last write of a job (its outcome): conditional on the lease; drops it."""
    result = session.execute(_held(job, job_id, lease).values(lease_owner=None, lease_expires_at=None, **values))
    return result.rowcount == 1


def expired(session: Session, job: Job) -> list[str]:
    """Running jobs whose worker stopped renewing: back to queued (the caller re-enqueues).

    A job that was being cancelled when its worker died is the caller's business."""
    ids = list(
        session.scalars(
            select(job.id).where(job.status == "running", job.lease_expires_at < db_now())
        )
    )
    if ids:
        session.execute(
            update(job)
            .where(job.id.in_(ids), job.status == "running", job.lease_expires_at < db_now())
            .values(status="queued", lease_owner=None, enqueued_at=utcnow())
        )
    return ids


def stale_queued(session: Session, job: Job, *, older_than: float, limit: int) -> list[str]:
    """Up to `limit` jobs queued longer than `older_than` s, oldest wake-up first (the caller
    knows how many messages are missing); their wake-up time is reset."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    if limit <= 0:
        return []
    ids = list(session.scalars(select(job.id).where(job.status == "queued", job.enqueued_at < cutoff)
                               .order_by(job.enqueued_at).limit(limit)))
    if ids:
        session.execute(update(job).where(job.id.in_(ids)).values(enqueued_at=now))
    return ids


def queued_count(session: Session, job: Job) -> int:
    return session.scalar(select(func.count()).select_from(job).where(job.status == "queued")) or 0


RECONCILER_LOCK = 0x7265_6764_6966_66  # "regdiff": the advisory lock of the reconciler


def reconciler_turn(session: Session) -> bool:
    """True for one reconciler at a time: a transaction-scoped advisory lock on PostgreSQL
    (released at commit); SQLite serialises writers already and has one embedded worker."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(RECONCILER_LOCK))))
