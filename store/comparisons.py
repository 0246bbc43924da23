"""What a comparison reads besides the two runs: a run's seed siblings in its sweep, and a
tenant's finished runs (the candidates for a seed-variance calibration)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.tables import Run

CALIBRATION_CANDIDATES = 1000  # the newest succeeded runs looked at; older ones are not searched


def sweep_members(*, session: Session, tenant: str, sweep_id: str) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.tenant == tenant, Run.sweep_id == sweep_id)
                                .order_by(Run.created_at, Run.id)))


def succeeded_runs(*, session: Session, tenant: str, limit: int = CALIBRATION_CANDIDATES) -> list[Run]:
    """The tenant's newest succeeded runs, newest first."""
    return list(session.scalars(select(Run).where(Run.tenant == tenant, Run.status == "succeeded")
                                .order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)))
