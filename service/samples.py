"""Samples on demand from a run's checkpoint: checked, stored as a queued job, then queued."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from service import limits
from service.errors import Problem, invalid
from service.lookup import found
from service.runs import idempotency_reused
from store import blobs, runs
from store import samples as stored
from store.settings import Settings
from store.tables import Run, SampleJob
from worker.celery_app import enqueue_sample

log = logging.getLogger(__name__)


def request_samples(session: Session, settings: Settings, run: Run, params: dict[str, Any], *,
                    idempotency_key: str | None = None) -> tuple[SampleJob, bool]:
    """`params` as SampleRequest holds them (n, sampler, steps, eta, seed, checkpoint); returns
    (job, created). A repeated Idempotency-Key with the same body returns the first job."""
    if params["n"] > settings.max_sample_n:
        raise invalid("n", f"at most {settings.max_sample_n} images per request (REGDIFF_MAX_SAMPLE_N)")
    guidance, timesteps = params.get("guidance"), run.spec["model"]["timesteps"]
    if guidance and guidance["t_max"] > timesteps:
        raise invalid("guidance.t_max", f"at most the run's model.timesteps ({timesteps})")
    checkpoint = params.get("checkpoint")
    if checkpoint is not None:
        ckpt = runs.get_checkpoint(session=session, tenant=run.tenant, checkpoint_id=checkpoint)
        if ckpt is None or ckpt.run_id != run.id:
            raise invalid("checkpoint", f"run {run.id} has no checkpoint {checkpoint!r}; list them at"
                          f" /v1/runs/{run.id}/checkpoints")
    elif runs.latest_checkpoint(session=session, run_id=run.id) is None:
        raise Problem(409, "Conflict", f"run {run.id} has no checkpoint yet (status {run.status})")
    if stored.keyed_job(session=session, tenant=run.tenant, idempotency_key=idempotency_key) is None:
        limits.check_sample_quota(session, settings, run.tenant)  # a replay creates nothing
    try:
        job, created = stored.create_sample_job(session=session, tenant=run.tenant, run_id=run.id,
                                                checkpoint_id=checkpoint, params=params,
                                                idempotency_key=idempotency_key)
    except runs.IdempotencyConflict as exc:
        raise idempotency_reused(f"sample job {exc}") from None
    session.commit()
    if created:
        try:
            enqueue_sample(job.id)
        except Exception:  # stored and queued: the reconciler sends its wake-up once the broker is back
            log.exception("could not enqueue sample job %s; the reconciler will retry", job.id)
    return job, created


def get_sample(session: Session, tenant: str, sample_id: str) -> SampleJob:
    """Another tenant's job answers 404, exactly like a missing one."""
    return found(stored.get_sample(session=session, tenant=tenant, sample_id=sample_id), "sample job", sample_id)


def delete(session: Session, job: SampleJob) -> None:
    """Removes an on-demand job and its images, whatever its status (a worker drawing it drops its
    result: its lease went with the row). A run's preview is the run's: 409, delete the run instead."""
    if job.kind == "preview":
        raise Problem(409, detail=f"sample job {job.id} is the preview of run {job.run_id}; it goes with"
                      f" DELETE /v1/runs/{job.run_id}")
    stored.delete_sample(session=session, sample_id=job.id)
    session.commit()


def images(session: Session, job: SampleJob) -> blobs.Blob:
    """Where the job's .npz is, to stream it; 409 when it has none (deleted while being read)."""
    blob = blobs.sample_images_blob(session=session, sample_id=job.id)
    if blob is None:
        raise Problem(409, detail=f"sample job {job.id} has no images")
    return blob


def finished(job: SampleJob) -> SampleJob:
    """The job, once it has images; 409 while it is queued or running, or after it failed."""
    if job.status != "succeeded":
        raise Problem(409, "Conflict", f"sample job {job.id} is {job.status}" + (f": {job.error}" if job.error else ""))
    return job
