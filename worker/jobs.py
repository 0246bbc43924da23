"""A claimed training run between its claim and its outcome: the lease, resume, progress,
checkpoints, preview and the run row's final status.

`models.trainer.train` (or models/stacked.py for a sweep's points) is a plain function; this module
is what makes a run survive around it: the lease decides who owns it, checkpoints let another worker
resume it with exact step continuity, and the database records everything a client reads.
worker/training.py decides how a claimed run trains (alone or stacked); this module is the same for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from models.datasets import ImageSet
from models.devices import resolve_device
from models.images import grid_png
from models.samplers import sample_from_state
from models.spec import RunSpec
from models.trainer import NonFiniteLoss, TrainHooks, TrainResult
from store import leases, quotas, runs
from store import samples as stored_samples
from store.db import session_scope
from store.settings import get_settings
from store.tables import as_utc
from worker import errors
from worker.celery_app import enqueue_train
from worker.evaluation import evaluate_final
from worker.heartbeat import Heartbeat
from worker.metrics import TrainingPace
from worker.retry import TRANSIENT, DatabaseUnavailable, in_transaction, retrying
from worker.samples import npz_bytes

log = logging.getLogger(__name__)
MINE = ("running", "cancelling")  # the statuses a worker may move a run on from


def claim(run_id: str, owner: str) -> leases.Lease | None:
    """The run's lease, or None: left queued (its tenant's running cap), not claimable (done,
    cancelled, owned elsewhere: the message is dropped), or out of attempts (failed here)."""
    settings = get_settings()
    with session_scope() as session:
        if quotas.over_running_cap(session=session, run_id=run_id, cap=settings.max_running_runs):
            # Stays queued; the reconciler re-enqueues it once its message is gone (worker/reconciler.py).
            log.info("run %s: its tenant already has %d running runs (REGDIFF_MAX_RUNNING_RUNS); left queued",
                     run_id, settings.max_running_runs)
            return None
        claimed = runs.claim_run(session=session, run_id=run_id, owner=owner, lease_seconds=settings.lease_seconds)
    if not claimed.won:
        log.info("run %s: not claimable (done, cancelled or owned elsewhere); message dropped", run_id)
        return None
    lease = leases.Lease(owner, claimed.epoch)
    if claimed.attempts > settings.max_attempts:
        _fail(run_id, lease, errors.worker_lost(settings.max_attempts))
        return None
    return lease


def guarded(run_id: str, lease: leases.Lease, work: Callable[[], None]) -> None:
    """`work()` for a claimed run, with what ends it otherwise: a lost lease (leave the run alone), an
    unreachable database (give it back), a non-finite loss or any other error (the run fails)."""
    try:
        work()
    except leases.LeaseLost:  # another claim owns the run now: every further write would be refused
        log.warning("run %s: lease epoch %d lost; stopped without touching the run", run_id, lease.epoch)
    except (DatabaseUnavailable, *TRANSIENT):
        log.exception("run %s: the database is unreachable; giving the run back", run_id)
        give_back(run_id, lease, "the database was unreachable")
    except NonFiniteLoss as exc:  # the user's settings, not a fault: no trace in the log
        _fail(run_id, lease, errors.user_error(exc))
    except Exception as exc:
        log.exception("run %s failed", run_id)  # the exception and its text go to the log only
        _fail(run_id, lease, errors.user_error(exc))


class Job:
    """One claimed run between its claim and its outcome: what it resumes from, the hooks that
    record its progress and checkpoints, and what its TrainResult means for the run row. Training
    itself is the caller's: `train` alone, or models/stacked.py with other points (worker/stacking.py)."""

    def __init__(self, run_id: str, lease: leases.Lease, beat: Heartbeat, row, resume, init_weights):
        settings = get_settings()
        self.run_id, self.lease, self.beat = run_id, lease, beat
        self.tenant, spec_json, started = row
        self.spec = RunSpec.model_validate(spec_json)
        self.resume, self.init_weights = resume, init_weights  # (step, id, bytes) | None, bytes | None
        self.device = resolve_device(settings.device)
        self.progress = _ProgressWriter(run_id, lease, settings.log_flush_seconds,
                                        TrainingPace(self.spec.train.batch_size))
        elapsed = time.time() - as_utc(started).timestamp() if started else 0.0
        self.limit = min(settings.run_time_limit_seconds, self.spec.time_limit_seconds or float("inf"))
        beat.limit_to(self.limit - elapsed)

    @classmethod
    def load(cls, run_id: str, lease: leases.Lease, beat: Heartbeat) -> Job:
        row, resume, init_weights = retrying(lambda: _load(run_id), f"run {run_id}: load")
        job = cls(run_id, lease, beat, row, resume, init_weights)
        if resume is not None:
            _write(run_id, "resumed event", lambda session: runs.add_event(
                session=session, run_id=run_id, type="resumed", message=f"resumed from step {resume[0]}",
                data={"step": resume[0], "checkpoint": resume[1]}, lease=lease))
        return job

    @property
    def resume_state(self) -> bytes | None:
        return self.resume[2] if self.resume else None

    def hooks(self) -> TrainHooks:
        return TrainHooks(on_log=self.progress, on_checkpoint=self.save, should_stop=self.beat.should_stop)

    def save(self, step: int, state: bytes, is_final: bool = False) -> str:
        def write() -> str:
            with session_scope() as session:
                return runs.save_checkpoint(session=session, run_id=self.run_id, step=step, data=state,
                                            is_final=is_final, keep=get_settings().keep_checkpoints, lease=self.lease)
        return retrying(write, f"run {self.run_id}: checkpoint at step {step}")

    def conclude(self, result: TrainResult, data: ImageSet) -> None:
        """A stopped run is given back (warm shutdown), cancelled or failed (time limit); an ended
        one gets its final checkpoint, preview and evaluation (on `data`), then succeeds."""
        run_id, lease, spec = self.run_id, self.lease, self.spec
        if result.stopped:
            if self.beat.stop_reason == "shutdown":  # a warm shutdown: keep the steps done, then give the run back
                if result.steps_done > (self.resume[0] if self.resume else 0):
                    self.save(result.steps_done, result.state)
                give_back(run_id, lease, "its worker was shutting down")
                return
            _stopped(run_id, lease, self.beat.stop_reason, result.steps_done, self.limit)
            return
        self.progress.final(result.steps_done, result.metrics)
        images = sample_from_state(result.state, n=spec.preview.n, sampler=spec.preview.sampler,
                                   steps=spec.preview.steps, eta=0.0, seed=spec.preview.seed, device=self.device)
        scores = evaluate_final(run_id, spec, result.state, data, device=self.device, lease=lease)  # None when off

        def succeed(session) -> None:
            ckpt_id = runs.save_checkpoint(session=session, run_id=run_id, step=result.steps_done,
                                           data=result.state, is_final=True, keep=get_settings().keep_checkpoints,
                                           lease=lease)
            _add_preview(session, run_id, self.tenant, ckpt_id, spec, images)
            runs.set_status(session=session, run_id=run_id, status="succeeded", expect=MINE, lease=lease,
                            step=result.steps_done, evaluation=scores)

        _write(run_id, "outcome", succeed)


def _load(run_id: str):
    """((tenant, spec, started_at), (step, id, bytes) of the checkpoint to resume from or None, init weights)."""
    with session_scope() as session:
        run = runs.load_run(session=session, run_id=run_id)
        resume = runs.latest_checkpoint(session=session, run_id=run_id)
        init_weights = _init_weights(session, run.tenant, run.spec.get("init_from")) if resume is None else None
        return ((run.tenant, run.spec, run.started_at), (resume.step, resume.id, resume.data) if resume else None,
                init_weights)


def _write(run_id: str, what: str, write):
    """`write(session)` in one transaction, retried through a database blip (worker/retry.py); its result."""
    return in_transaction(write, f"run {run_id}: {what}")


def _init_weights(session, tenant: str, checkpoint_id: str | None) -> bytes | None:
    if checkpoint_id is None:
        return None
    ckpt = runs.get_checkpoint(session=session, tenant=tenant, checkpoint_id=checkpoint_id)
    if ckpt is None:
        raise errors.SourceMissing(f"init_from: checkpoint {checkpoint_id!r} does not exist")
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
        _fail(run_id, lease, errors.time_limit(limit, step))
    else:  # lease lost: another worker owns the run now, leave it alone
        log.warning("run %s: lease lost at step %d; stopping without touching it", run_id, step)


def _finish(run_id: str, lease: leases.Lease, status: str, message: str, code: str | None = None) -> None:
    """The run's outcome; `message` is user-facing (run.error), `code` goes into the status event."""
    failed = status == "failed"
    try:
        _write(run_id, "outcome", lambda session: runs.set_status(
            session=session, run_id=run_id, status=status, message=message, expect=MINE, lease=lease,
            level="error" if failed else "info", error=message if failed else None,
            event_data={"code": code} if code else None))
    except DatabaseUnavailable:  # the lease expires and another claim decides the run
        log.exception("run %s: could not record %s", run_id, status)


def _fail(run_id: str, lease: leases.Lease, error: errors.UserError) -> None:
    _finish(run_id, lease, "failed", str(error), code=error.code)


def give_back(run_id: str, lease: leases.Lease, reason: str) -> None:
    """Back to the queue without spending an attempt, then a wake-up for the next worker."""
    try:
        given = _write(run_id, "give back", lambda session: runs.give_back(session=session, run_id=run_id,
                                                                           lease=lease, reason=reason))
    except DatabaseUnavailable:  # the lease expires and the reconciler queues the run again
        log.exception("run %s: could not give the run back", run_id)
        return
    if not given:  # another claim owns the run (and has its message), or the run ended or is gone
        log.warning("run %s: lease epoch %d lost before the give-back; not re-enqueued", run_id, lease.epoch)
        return
    try:
        enqueue_train(run_id)
    except Exception:
        log.exception("run %s: could not enqueue; the reconciler will", run_id)


class _ProgressWriter:
    """on_log hook: at most one database write per `interval` seconds (throttled)."""

    def __init__(self, run_id: str, lease: leases.Lease, interval: float, pace: TrainingPace):
        self.run_id, self.lease, self.interval, self.pace, self._last = run_id, lease, interval, pace, 0.0
        self.written: int | None = None  # the step of this claim's latest write

    def final(self, step: int, metrics: dict[str, float]) -> None:
        """The end of training: the last step, unless its log write already recorded it (a second
        write repeated the step in the metric series) or this claim trained no step (a run given
        back at its last step and resumed there: `metrics` is empty, and writing it would wipe the
        run's metrics)."""
        if metrics and step != self.written:
            self.flush(step, metrics)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.flush(step, metrics)

    def flush(self, step: int, metrics: dict[str, float]) -> None:
        self._last = time.monotonic()
        self.pace.observe(step)
        _write(self.run_id, f"progress at step {step}", lambda session: runs.record_progress(
            session=session, run_id=self.run_id, step=step, metrics=metrics, lease=self.lease))
        self.written = step
