"""Sample jobs: draw images on demand from one of a run's checkpoints."""

from __future__ import annotations

import io
import logging

import numpy as np

from models.devices import resolve_device
from models.images import grid_png
from models.samplers import sample_from_state
from models.spec import GuidanceSpec
from store import leases
from store import samples as stored
from store.db import session_scope
from store.settings import get_settings
from store.tables import SampleJob
from worker import errors
from worker.celery_app import enqueue_sample
from worker.heartbeat import Heartbeat
from worker.retry import DatabaseUnavailable, in_transaction

log = logging.getLogger(__name__)


def npz_bytes(images: np.ndarray) -> bytes:
    """uint8 (N, H, W[, C]) as an .npz with one array `images` (grayscale drops C)."""
    buf = io.BytesIO()
    np.savez(buf, images=images[..., 0] if images.shape[-1] == 1 else images)
    return buf.getvalue()


def run_sampling(sample_id: str, *, owner: str) -> None:
    settings = get_settings()
    with session_scope() as session:
        claim = leases.claim(session, SampleJob, sample_id, owner=owner, lease_seconds=settings.lease_seconds)
    if not claim.won:
        return
    lease = leases.Lease(owner, claim.epoch)
    if claim.attempts > settings.max_attempts:  # it took its worker down each time: stop trying
        _finish(sample_id, lease, status="failed", error=str(errors.worker_lost(settings.max_attempts)))
        return
    try:
        with Heartbeat(SampleJob, sample_id, lease=lease):
            _sample(sample_id, lease)
    except DatabaseUnavailable:  # infrastructure, not the job: back to the queue, no attempt spent
        log.exception("sample job %s: the database was unreachable", sample_id)
        _give_back(sample_id, lease)
    except Exception as exc:
        log.exception("sample job %s failed", sample_id)
        _finish(sample_id, lease, status="failed", error=str(errors.user_error(exc)))


def _sample(sample_id: str, lease: leases.Lease) -> None:
    settings = get_settings()

    def source(session) -> tuple[dict, str | None, bytes | None]:
        params, ckpt = stored.job_source(session=session, sample_id=sample_id)
        return params, ckpt and ckpt.id, ckpt and ckpt.data

    params, ckpt_id, state = in_transaction(source, f"sample job {sample_id}: load")
    if state is None:
        raise errors.SourceMissing("the run has no checkpoint to sample from yet")
    guidance = GuidanceSpec.model_validate(params["guidance"]) if params.get("guidance") else None
    images = sample_from_state(state, n=params["n"], sampler=params["sampler"], steps=params["steps"],
                               eta=params["eta"], seed=params["seed"], device=resolve_device(settings.device),
                               guidance=guidance)
    _finish(sample_id, lease, status="succeeded", images_npz=npz_bytes(images), grid_png=grid_png(images),
            checkpoint_id=ckpt_id)


def _finish(sample_id: str, lease: leases.Lease, **values: object) -> None:
    """The job's outcome, written only while `lease` still holds it (else another worker does);
    retried through database blips. Past REGDIFF_DB_RETRY_SECONDS the lease expires and the
    reconciler queues the job again."""
    try:
        written = in_transaction(lambda session: stored.finish_sample(session=session, sample_id=sample_id,
                                                                      lease=lease, **values),
                                 f"sample job {sample_id}: outcome")
    except DatabaseUnavailable:
        log.exception("sample job %s: could not write the outcome", sample_id)
        return
    if not written:
        log.warning("sample job %s: lease epoch %d lost; outcome dropped", sample_id, lease.epoch)


def _give_back(sample_id: str, lease: leases.Lease) -> None:
    """Back to the queue without spending an attempt, then a wake-up for the next worker."""
    try:
        if not in_transaction(lambda session: stored.give_back_sample(session=session, sample_id=sample_id,
                                                                      lease=lease),
                              f"sample job {sample_id}: give back"):
            return  # another claim owns it (and has its message), or it ended or is gone
    except DatabaseUnavailable:  # the lease expires and the reconciler queues it again
        return
    try:
        enqueue_sample(sample_id)
    except Exception:
        log.exception("sample job %s: could not enqueue; the reconciler will", sample_id)
