"""Sample jobs: draw images on demand from one of a run's checkpoints."""

from __future__ import annotations

import io
import logging

import numpy as np

from models.images import grid_png
from models.samplers import sample_from_state
from models.trainer import resolve_device
from store import leases, runs
from store.db import session_scope
from store.settings import get_settings
from store.tables import Checkpoint, SampleJob, utcnow
from worker import errors
from worker.heartbeat import Heartbeat

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
    try:
        with Heartbeat(SampleJob, sample_id, owner=owner):
            _sample(sample_id)
    except Exception as exc:
        log.exception("sample job %s failed", sample_id)
        _finish(sample_id, status="failed", error=str(errors.user_error(exc)))


def _sample(sample_id: str) -> None:
    settings = get_settings()
    with session_scope() as session:
        job = session.get(SampleJob, sample_id)
        params = dict(job.params)
        ckpt = (session.get(Checkpoint, job.checkpoint_id) if job.checkpoint_id
                else runs.latest_checkpoint(session=session, run_id=job.run_id))
        if ckpt is None:
            raise LookupError("the run has no checkpoint to sample from yet")
        state = ckpt.data
    images = sample_from_state(state, n=params["n"], sampler=params["sampler"], steps=params["steps"],
                               eta=params["eta"], seed=params["seed"], device=resolve_device(settings.device))
    _finish(sample_id, status="succeeded", images_npz=npz_bytes(images), grid_png=grid_png(images),
            checkpoint_id=ckpt.id)


def _finish(sample_id: str, **values: object) -> None:
    from sqlalchemy import update

    with session_scope() as session:
        session.execute(update(SampleJob).where(SampleJob.id == sample_id)
                        .values(finished_at=utcnow(), lease_owner=None, **values))
