"""A sweep's waiting points trained together in this worker as one stacked model.

When a worker claims a run of a sweep, it also claims the sweep's other queued points that can
share a stack with it (models/stacked.py `stack_key`: same dataset, model, batch size, lr,
precision and compile, no init_from, and resuming from the same step), up to
REGDIFF_SWEEP_BATCH_MAX, and trains them as one model. Each point keeps its own lease, heartbeat,
progress, checkpoints, events and outcome (worker/jobs.py), so the api and every other feature see
ordinary runs: a cancel stops only its point, a NaN fails only its point, a warm shutdown gives
each point back with its own checkpoint, and the next claim restacks the points that resume from
one step. Every run of a stack says so in its events ("stacked"); a sweep point that trains alone
while stacking is on says why ("unstacked": its sweep's points differ in a shared field, or no
other point was waiting). A stack that breaks as a whole (not one point's NaN) gives every point
back without spending an attempt, marked ("stack_failed") to train alone from then on.

REGDIFF_SWEEP_BATCHING: auto stacks on CUDA only, where a small UNet leaves the GPU mostly idle;
on 2 CPU cores an 8-point stack ran at 0.93x the images/s of the runs one after another
(bench/sweep_throughput.py), so there `on` is for tests and for a user who wants one process.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import torch

from models.spec import RunSpec
from models.stacked import StackedPoint, stack_differences, stack_key, train_stacked
from models.trainer import TrainHooks, TrainResult
from store import leases, runs
from store.db import session_scope
from store.settings import get_settings
from store.tables import Run
from worker.data import load_images
from worker.heartbeat import Heartbeat
from worker.jobs import Job, claim, give_back, guarded
from worker.retry import in_transaction

log = logging.getLogger(__name__)
STACK_FAILED = "stack_failed"  # the event that keeps a run out of stacks from then on


def enabled(device: torch.device) -> bool:
    mode = get_settings().sweep_batching
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def claim_partners(run_id: str, *, owner: str, device: torch.device) -> list[tuple[str, leases.Lease]]:
    """Claim the queued points of `run_id`'s sweep that can share its stack; [] when stacking is
    off, the run is outside a sweep, or none can. Any error here leaves the run to train alone."""
    if not enabled(device):
        return []
    try:
        candidates, why_alone = _candidates(run_id)
    except Exception:
        log.exception("run %s: could not look for stack partners; training it alone", run_id)
        return []
    partners = []
    for candidate in candidates[: get_settings().sweep_batch_max - 1]:
        lease = claim(candidate, owner)  # its own lease; a run another worker took in between is skipped
        if lease is not None:
            partners.append((candidate, lease))
    if not partners and why_alone:
        in_transaction(lambda session: runs.add_event(
            session=session, run_id=run_id, type="unstacked", message=f"trained alone: {why_alone}"),
            f"run {run_id}: unstacked event")
    return partners


def _candidates(run_id: str) -> tuple[list[str], str | None]:
    """(queued sibling points that can join the stack, oldest first; why the run trains alone if none
    can: None outside a sweep)."""
    with session_scope() as session:
        run = session.get(Run, run_id)
        siblings = runs.sweep_siblings(session=session, run=run)
        if not siblings:
            return [], None
        if runs.has_event(session=session, run_id=run_id, type=STACK_FAILED):
            return [], "its stack failed before, so it trains alone"
        spec = RunSpec.model_validate(run.spec)
        key, step = stack_key(spec), runs.checkpoint_step(session, run_id)
        joinable, differing = [], set()
        for sibling in siblings:
            other = RunSpec.model_validate(sibling.spec)
            differing.update(stack_differences(spec, other))
            if (key is not None and sibling.status == "queued" and stack_key(other) == key
                    and runs.checkpoint_step(session, sibling.id) == step
                    and not runs.has_event(session=session, run_id=sibling.id, type=STACK_FAILED)):
                joinable.append(sibling.id)
    if joinable:
        return joinable, None
    if differing:
        return [], f"this sweep's points differ in {', '.join(sorted(differing))}, so they cannot share one model"
    return [], "no other point of its sweep was waiting to train"


class _Isolated:
    """A point's hooks inside a stack: an error in one of them (its lease lost, its database
    writes failing) stops that point only, and is raised again for that run alone afterwards."""

    def __init__(self, hooks: TrainHooks):
        self.hooks, self.error = hooks, None

    def _call(self, hook, *args) -> None:
        if self.error is None:
            try:
                hook(*args)
            except Exception as exc:  # noqa: BLE001 (kept and raised for this run in outcome())
                self.error = exc

    def as_hooks(self) -> TrainHooks:
        return TrainHooks(
            on_log=lambda step, metrics: self._call(self.hooks.on_log, step, metrics),
            on_checkpoint=lambda step, state: self._call(self.hooks.on_checkpoint, step, state),
            should_stop=lambda: self.error is not None or self.hooks.should_stop(),
        )

    def outcome(self, outcome: TrainResult | Exception) -> TrainResult:
        if self.error is not None:
            raise self.error
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def train_stacked_runs(claims: list[tuple[str, leases.Lease]]) -> None:
    """Train the claimed runs as one stack. Each run's outcome is recorded when it leaves the stack
    (its heartbeat stops then), so a point that ends, fails or is cancelled early is done at once."""
    names = [run_id for run_id, _ in claims]
    beats: dict[str, ExitStack] = {}  # the heartbeat of each run still in the stack
    try:
        jobs: list[Job] = []
        for run_id, lease in claims:
            with ExitStack() as beat_scope:  # closed (the beat stopped) unless the run loads
                beat = beat_scope.enter_context(Heartbeat(Run, run_id, lease=lease))
                others = [name for name in names if name != run_id]
                guarded(run_id, lease, lambda run_id=run_id, lease=lease, beat=beat, others=others: jobs.append(
                    _load_stacked(run_id, lease, beat, others)))
                if jobs and jobs[-1].run_id == run_id:
                    beats[run_id] = beat_scope.pop_all()
        if jobs:
            _train(jobs, beats)
    finally:
        for beat_scope in beats.values():
            beat_scope.close()


def _train(jobs: list[Job], beats: dict[str, ExitStack]) -> None:
    hooks = [_Isolated(job.hooks()) for job in jobs]
    try:
        data = load_images(jobs[0].spec.dataset, tenant=jobs[0].tenant)

        def conclude(index: int, outcome: TrainResult | Exception) -> None:
            job = jobs[index]
            guarded(job.run_id, job.lease, lambda: job.conclude(hooks[index].outcome(outcome), data))
            beats.pop(job.run_id).close()

        points = [StackedPoint(job.spec, isolated.as_hooks(), job.resume_state) for job, isolated in zip(jobs, hooks)]
        train_stacked(points, data, device=jobs[0].device, on_outcome=conclude)
    except Exception as exc:  # the stack itself broke (not one point's NaN or hook: those are per point)
        log.exception("a stack of %d runs failed; each goes back to the queue to train alone", len(jobs))
        for job in jobs:
            if job.run_id in beats:  # not concluded before the stack broke
                guarded(job.run_id, job.lease, lambda job=job, exc=exc: _unstack(job, exc))


def _load_stacked(run_id: str, lease: leases.Lease, beat: Heartbeat, others: list[str]) -> Job:
    job = Job.load(run_id, lease, beat)
    in_transaction(lambda session: runs.add_event(
        session=session, run_id=run_id, type="stacked", lease=lease, data={"runs": others},
        message=f"trained as one stacked model with {len(others)} other point(s) of its sweep"),
        f"run {run_id}: stacked event")
    return job


def _unstack(job: Job, exc: Exception) -> None:
    """Back to the queue without spending an attempt, marked so that its next claim trains it alone
    from its latest checkpoint: a stack that cannot train (say, a kernel the stacked model lacks on
    this device) must not fail runs that train fine alone."""
    in_transaction(lambda session: runs.add_event(
        session=session, run_id=job.run_id, type=STACK_FAILED, level="warning", lease=job.lease,
        message=f"its stack failed ({type(exc).__name__}); it trains alone from its latest checkpoint"),
        f"run {job.run_id}: stack failed event")
    give_back(job.run_id, job.lease, "its stack failed")
