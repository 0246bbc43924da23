"""Keyword-only store functions for sample jobs: on-demand draws and a run's end-of-run preview."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from store import runs, webhooks
from store.leases import Lease, release
from store.tables import Checkpoint, SampleJob, utcnow


def get_sample(*, session: Session, tenant: str, sample_id: str) -> SampleJob | None:
    """Another tenant's job is None, like a missing one. The images are deferred: a lookup reads
    no blob, `.grid_png` / `.images_npz` load them (session open)."""
    return session.scalar(select(SampleJob).options(defer(SampleJob.images_npz), defer(SampleJob.grid_png))
                          .where(SampleJob.id == sample_id, SampleJob.tenant == tenant))


def delete_sample(*, session: Session, sample_id: str) -> None:
    """Removes the job with its images; a worker drawing it finds its lease gone and drops the result."""
    session.execute(delete(SampleJob).where(SampleJob.id == sample_id))


def create_sample_job(*, session: Session, tenant: str, run_id: str, checkpoint_id: str | None,
                      params: dict[str, Any], idempotency_key: str | None = None) -> tuple[SampleJob, bool]:
    """A queued on-demand job (the caller commits, then enqueues); returns (job, created).

    With an Idempotency-Key the job's id is derived from (tenant, key), so the primary key
    makes the key unique without a column of its own: a repeat with the same run and
    parameters returns the first job (created False), with others raises IdempotencyConflict."""
    job_id = keyed_id(tenant, idempotency_key) if idempotency_key is not None else None
    if job_id is not None and (existing := session.get(SampleJob, job_id)) is not None:
        return _same_request(existing, run_id, params), False
    job = SampleJob(tenant=tenant, run_id=run_id, checkpoint_id=checkpoint_id, params=params, enqueued_at=utcnow())
    if job_id is not None:
        job.id = job_id
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # a concurrent request with the same key won the insert
        existing = session.get(SampleJob, job_id) if job_id is not None else None
        if existing is None:
            raise
        return _same_request(existing, run_id, params), False
    return job, True


def keyed_id(tenant: str, idempotency_key: str) -> str:
    return "smp_" + hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:20]


def keyed_job(*, session: Session, tenant: str, idempotency_key: str | None) -> SampleJob | None:
    """The job an earlier request with this key created, if any."""
    return None if idempotency_key is None else session.get(SampleJob, keyed_id(tenant, idempotency_key))


def _same_request(job: SampleJob, run_id: str, params: dict[str, Any]) -> SampleJob:
    if job.run_id != run_id or job.params != params:
        raise runs.IdempotencyConflict(job.id)
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


def give_back_sample(*, session: Session, sample_id: str, lease: Lease) -> bool:
    """Back to the queue without spending an attempt (the caller enqueues it): the database, not
    the job, failed. False when `lease` no longer holds the job."""
    return release(session, SampleJob, sample_id, lease=lease, status="queued", enqueued_at=utcnow(),
                   attempts=SampleJob.attempts - 1)


def finish_sample(*, session: Session, sample_id: str, lease: Lease, **values: Any) -> bool:
    """Stamp the outcome (status, images or error) and drop the lease; only while `lease` still
    holds the job (False: another claim owns it now, and its outcome is that worker's to write).
    A success writes its samples.succeeded event in the same transaction."""
    if not release(session, SampleJob, sample_id, lease=lease, finished_at=utcnow(), **values):
        return False
    if values.get("status") == "succeeded":
        webhooks.sample_succeeded(session=session, sample_id=sample_id)
    return True
