"""Counts behind the per-tenant quotas (service/limits.py) and the worker's running-runs cap."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.tables import Run, SampleJob


def run_counts(*, session: Session, tenant: str) -> dict[str, int]:
    """{"queued": n, "running": n, "cancelling": n} for the tenant's unfinished runs."""
    rows = session.execute(
        select(Run.status, func.count())
        .where(Run.tenant == tenant, Run.status.in_(("queued", "running", "cancelling")))
        .group_by(Run.status)
    )
    counts = {"queued": 0, "running": 0, "cancelling": 0}
    counts.update({status: n for status, n in rows})
    return counts


def is_replay(*, session: Session, tenant: str, idempotency_key: str | None) -> bool:
    """A retry of a request this tenant already made (it creates nothing, so no quota applies)."""
    if idempotency_key is None:
        return False
    found = session.scalar(select(Run.id).where(Run.tenant == tenant, Run.idempotency_key == idempotency_key))
    return found is not None


def over_running_cap(*, session: Session, run_id: str, cap: int) -> bool:
    """True when the run's tenant already has `cap` other runs running (or being cancelled).

    Read without a lock: two workers starting two runs of one tenant at the same moment can
    overshoot by one; the cap is for fairness between tenants, not a hard guarantee."""
    tenant = session.scalar(select(Run.tenant).where(Run.id == run_id))
    if tenant is None:
        return False
    busy = session.scalar(
        select(func.count())
        .where(Run.tenant == tenant, Run.id != run_id, Run.status.in_(("running", "cancelling")))
    )
    return (busy or 0) >= cap


def active_samples(*, session: Session, tenant: str) -> int:
    """The tenant's on-demand sample jobs still queued or running."""
    return session.scalar(
        select(func.count()).select_from(SampleJob)
        .where(SampleJob.tenant == tenant, SampleJob.status.in_(("queued", "running")))
    ) or 0
