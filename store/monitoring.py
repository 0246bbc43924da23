"""Aggregates for Prometheus, read at scrape time: counts by status, queue depth, throughput and
heartbeat age of running runs. Tenant-free by design: nothing here names who owns what."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.tables import Run, RunEvent, SampleJob, as_utc


@dataclass(frozen=True)
class Throughput:
    """A running run's pace between its last two progress records."""

    steps_per_second: float
    images_per_second: float


def runs_by_status(*, session: Session) -> dict[str, int]:
    return dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())


def sample_jobs_by_status(*, session: Session) -> dict[str, int]:
    return dict(session.execute(select(SampleJob.status, func.count()).group_by(SampleJob.status)).all())


def oldest_running_lease_expiry(*, session: Session) -> datetime | None:
    """The lease of a running run is renewed at every heartbeat to (beat + lease_seconds), so the
    earliest expiry dates the oldest heartbeat."""
    expiry = session.scalar(select(func.min(Run.lease_expires_at)).where(Run.status == "running"))
    return as_utc(expiry) if expiry is not None else None


def running_throughput(*, session: Session) -> list[Throughput]:
    """Steps/s and images/s (steps x batch size) of each running run with two progress records."""
    paces = []
    for run_id, spec in session.execute(select(Run.id, Run.spec).where(Run.status == "running")).all():
        last_two = session.execute(
            select(RunEvent.data, RunEvent.created_at)
            .where(RunEvent.run_id == run_id, RunEvent.type == "metrics")
            .order_by(RunEvent.id.desc()).limit(2)
        ).all()
        if len(last_two) < 2:
            continue
        (new, new_at), (old, old_at) = last_two
        seconds = (as_utc(new_at) - as_utc(old_at)).total_seconds()
        if seconds <= 0 or new["step"] <= old["step"]:
            continue
        steps_per_second = (new["step"] - old["step"]) / seconds
        paces.append(Throughput(steps_per_second, steps_per_second * spec["train"]["batch_size"]))
    return paces
