"""A training run under the worker: lease, resume, progress, checkpoints, preview, outcome.

`models.trainer.train` is a plain function; this module wraps it with what makes a run
survive: the lease decides who owns it, checkpoints let another worker resume it with exact
step continuity, and the database records everything a client reads.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from models.devices import resolve_device
from models.images import grid_png
from models.samplers import sample_from_state
from models.spec import RunSpec
from models.trainer import NonFiniteLoss, TrainHooks, train
from store import leases, quotas, runs
from store import samples as stored_samples
from store.db import session_scope
from store.settings import get_settings
from store.tables import Run, as_utc
from worker import errors
from worker.data import load_images
from worker.evaluation import evaluate_final
from worker.heartbeat import Heartbeat
from worker.metrics import TrainingPace
from worker.samples import npz_bytes

log = logging.getLogger(__name__)
MINE = ("running", "cancelling")  # the statuses a worker may move a run on from


def run_training(run_id: str, *, owner: str) -> None:
    settings = get_settings()
    with session_scope() as session:
        if quotas.over_running_cap(session=session, run_id=run_id, cap=settings.max_running_runs):
            # Stays queued; the reconciler re-enqueues it after REGDIFF_REQUEUE_AFTER_SECONDS.
            log.info("run %s: its tenant already has %d running runs (REGDIFF_MAX_RUNNING_RUNS); left queued",
                     run_id, settings.max_running_runs)
            return
        claim = leases.claim(session, Run, run_id, owner=owner, lease_seconds=settings.lease_seconds)
    if not claim.won:
        log.info("run %s: not claimable (done, cancelled or owned elsewhere); message dropped", run_id)
        return
    lease = leases.Lease(owner, claim.epoch)
    if claim.attempts > settings.max_attempts:
        _finish(run_id, lease, "failed", str(errors.worker_lost(settings.max_attempts)))
        return
    with session_scope() as session:
        runs.set_status(session=session, run_id=run_id, status="running", expect=MINE, lease=lease,
                        message=f"attempt {claim.attempts} on {owner}")
    try:
        # The heartbeat starts at the claim: loading the data and the checkpoint may outlast a lease.
        with Heartbeat(Run, run_id, lease=lease) as beat:
            _train(run_id, lease=lease, beat=beat)
    except leases.LeaseLost:  # another claim owns the run now: every further write would be refused
        log.warning("run %s: lease epoch %d lost; stopped without touching the run", run_id, lease.epoch)
    except NonFiniteLoss as exc:  # the user's settings, not a fault: no trace in the log
        _finish(run_id, lease, "failed", str(errors.user_error(exc)))
    except Exception as exc:
        log.exception("run %s failed", run_id)
        _finish(run_id, lease, "failed", str(errors.user_error(exc)))


def _train(run_id: str, *, lease: leases.Lease, beat: Heartbeat) -> None:
    settings = get_settings()
    with session_scope() as session:
        run = runs.load_run(session=session, run_id=run_id)
        tenant, spec_json = run.tenant, run.spec
        started = run.started_at
        resume = runs.latest_checkpoint(session=session, run_id=run_id)
        resume_bytes = resume.data if resume else None
        init_weights = _init_weights(session, tenant, spec_json.get("init_from")) if resume is None else None
    spec = RunSpec.model_validate(spec_json)
    data = load_images(spec.dataset, tenant=tenant)
    device = resolve_device(settings.device)
    elapsed = time.time() - as_utc(started).timestamp() if started else 0.0
    progress = _ProgressWriter(run_id, lease, settings.log_flush_seconds, TrainingPace(spec.train.batch_size))

    def on_checkpoint(step: int, state: bytes) -> None:
        with session_scope() as session:
            runs.save_checkpoint(session=session, run_id=run_id, step=step, data=state, is_final=False,
                                 keep=settings.keep_checkpoints, lease=lease)

    if resume is not None:
        with session_scope() as session:
            runs.add_event(session=session, run_id=run_id, type="resumed", message=f"resumed from step {resume.step}",
                           data={"step": resume.step, "checkpoint": resume.id}, lease=lease)
    limit = min(settings.run_time_limit_seconds, spec.time_limit_seconds or float("inf"))
    beat.limit_to(limit - elapsed)
    result = train(
        spec, data, device=device,
        hooks=TrainHooks(on_log=progress, on_checkpoint=on_checkpoint, should_stop=beat.should_stop),
        resume=resume_bytes, init_weights=init_weights,
    )
    if result.stopped:
        _stopped(run_id, lease, beat.stop_reason, result.steps_done, limit)
        return
    progress.flush(result.steps_done, result.metrics)
    images = sample_from_state(result.state, n=spec.preview.n, sampler=spec.preview.sampler,
                               steps=spec.preview.steps, eta=0.0, seed=spec.preview.seed, device=device)
    scores = evaluate_final(run_id, spec, result.state, data, device=device)  # None when off
    with session_scope() as session:
        ckpt_id = runs.save_checkpoint(session=session, run_id=run_id, step=result.steps_done,
                                       data=result.state, is_final=True, keep=settings.keep_checkpoints,
                                       lease=lease)
        _add_preview(session, run_id, tenant, ckpt_id, spec, images)
        runs.set_status(session=session, run_id=run_id, status="succeeded", expect=MINE, lease=lease,
                        step=result.steps_done,
                        evaluation=scores)


def _init_weights(session, tenant: str, checkpoint_id: str | None) -> bytes | None:
    if checkpoint_id is None:
        return None
    ckpt = runs.get_checkpoint(session=session, tenant=tenant, checkpoint_id=checkpoint_id)
    if ckpt is None:
        raise LookupError(f"init_from: checkpoint {checkpoint_id!r} does not exist")
    return ckpt.data


def _add_preview(session, run_id: str, tenant: str, ckpt_id: str, spec: RunSpec, images: np.ndarray) -> None:
    params = {"n": spec.preview.n, "sampler": spec.preview.sampler, "steps": spec.preview.steps,
              "eta": 0.0, "seed": spec.preview.seed, "checkpoint": ckpt_id}
    stored_samples.add_preview(session=session, tenant=tenant, run_id=run_id, checkpoint_id=ckpt_id, params=params,
                               images_npz=npz_bytes(images), grid_png=grid_png(images))


def _stopped(run_id: str, lease: leases.Lease, reason: str | None, step: int, limit: float) -> None:
    if reason == "cancelled":
        _finish(run_id, lease, "cancelled", f"cancelled at step {step}")
    elif reason == "time_limit":
        _finish(run_id, lease, "failed", str(errors.time_limit(limit, step)))
    else:  # lease lost: another worker owns the run now, leave it alone
        log.warning("run %s: lease lost at step %d; stopping without touching it", run_id, step)


def _finish(run_id: str, lease: leases.Lease, status: str, message: str) -> None:
    with session_scope() as session:
        runs.set_status(session=session, run_id=run_id, status=status, message=message, expect=MINE, lease=lease,
                        level="error" if status == "failed" else "info",
                        error=message if status == "failed" else None)


class _ProgressWriter:
    """on_log hook: at most one database write per `interval` seconds (throttled)."""

    def __init__(self, run_id: str, lease: leases.Lease, interval: float, pace: TrainingPace):
        self.run_id, self.lease, self.interval, self.pace, self._last = run_id, lease, interval, pace, 0.0

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.flush(step, metrics)

    def flush(self, step: int, metrics: dict[str, float]) -> None:
        self._last = time.monotonic()
        self.pace.observe(step)
        with session_scope() as session:
            runs.record_progress(session=session, run_id=self.run_id, step=step, metrics=metrics, lease=self.lease)
