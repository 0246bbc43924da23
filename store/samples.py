"""Keyword-only store functions for sample jobs: on-demand draws and a run's end-of-run preview."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import runs
from store.leases import Lease, release
from store.tables import Checkpoint, SampleJob, utcnow


def get_sample(*, session: Session, tenant: str, sample_id: str) -> SampleJob | None:
    """Another tenant's job is None, like a missing one."""
    return session.scalar(select(SampleJob).where(SampleJob.id == sample_id, SampleJob.tenant == tenant))


def create_sample_job(*, session: Session, tenant: str, run_id: str, checkpoint_id: str | None,
                      params: dict[str, Any]) -> SampleJob:
    """A queued on-demand job (the caller commits, then enqueues)."""
    job = SampleJob(tenant=tenant, run_id=run_id, checkpoint_id=checkpoint_id, params=params, enqueued_at=utcnow())
    session.add(job)
    session.flush()
    return job


def add_preview(*, session: Session, tenant: str, run_id: str, checkpoint_id: str, params: dict[str, Any],
                images_npz: bytes, grid_png: bytes) -> None:
    """The grid a run draws from its final checkpoint, stored as an already-succeeded job."""
    session.add(SampleJob(tenant=tenant, run_id=run_id, checkpoint_id=checkpoint_id, kind="preview",
                          status="succeeded", params=params, images_npz=images_npz, grid_png=grid_png))


def job_source(*, session: Session, sample_id: str) -> tuple[dict[str, Any], Checkpoint | None]:
    """(the job's parameters, the checkpoint to draw from: the one asked for, else the run's latest)."""
    job = session.get(SampleJob, sample_id)
    ckpt = (session.get(Checkpoint, job.checkpoint_id) if job.checkpoint_id
            else runs.latest_checkpoint(session=session, run_id=job.run_id))
    return dict(job.params), ckpt


def finish_sample(*, session: Session, sample_id: str, lease: Lease, **values: Any) -> bool:
    """Stamp the outcome (status, images or error) and drop the lease; only while `lease` still
    holds the job (False: another claim owns it now, and its outcome is that worker's to write)."""
    return release(session, SampleJob, sample_id, lease=lease, finished_at=utcnow(), **values)
