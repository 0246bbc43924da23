"""Counts behind the per-tenant quotas (service/limits.py) and the worker's running-runs cap."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.tables import Checkpoint, Dataset, Run, SampleJob


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


def stored_bytes(*, session: Session, tenant: str) -> int:
    """What the tenant stores: checkpoints (their `size` column), sample arrays and grids, uploads.

    Sizes come from `length()`, which neither database answers by reading the value (SQLite
    reads the record header, PostgreSQL the varlena header): no blob is loaded."""
    checkpoints = (select(func.coalesce(func.sum(Checkpoint.size), 0)).join(Run, Run.id == Checkpoint.run_id)
                   .where(Run.tenant == tenant))
    samples = (select(func.coalesce(func.sum(func.coalesce(func.length(SampleJob.images_npz), 0)
                                             + func.coalesce(func.length(SampleJob.grid_png), 0)), 0))
               .where(SampleJob.tenant == tenant))
    uploads = select(func.coalesce(func.sum(func.length(Dataset.data)), 0)).where(Dataset.tenant == tenant)
    return sum(int(session.scalar(query) or 0) for query in (checkpoints, samples, uploads))
