"""A training run under the worker: claim it, then train it alone or, for a sweep's waiting
points, stacked with them (worker/stacking.py); worker/jobs.py does the rest for either."""

from __future__ import annotations

import logging

from models.devices import resolve_device
from models.trainer import train
from store import leases
from store.settings import get_settings
from store.tables import Run
from worker import stacking
from worker.celery_app import enqueue_train
from worker.data import load_images
from worker.heartbeat import SHUTTING_DOWN, Heartbeat
from worker.jobs import Job, claim, guarded

log = logging.getLogger(__name__)


def run_training(run_id: str, *, owner: str) -> None:
    settings = get_settings()
    if SHUTTING_DOWN.is_set():  # a message taken during a warm shutdown: hand it on untouched
        enqueue_train(run_id)
        return
    lease = claim(run_id, owner)
    if lease is None:
        return
    partners = stacking.claim_partners(run_id, owner=owner, device=resolve_device(settings.device))
    if partners:
        stacking.train_stacked_runs([(run_id, lease), *partners])
        return
    guarded(run_id, lease, lambda: _train_alone(run_id, lease))


def _train_alone(run_id: str, lease: leases.Lease) -> None:
    # The heartbeat starts at the claim: loading the data and the checkpoint may outlast a lease.
    with Heartbeat(Run, run_id, lease=lease) as beat:
        job = Job.load(run_id, lease, beat)
        data = load_images(job.spec.dataset, tenant=job.tenant)
        result = train(job.spec, data, device=job.device, hooks=job.hooks(), resume=job.resume_state,
                       init_weights=job.init_weights)
        job.conclude(result, data)


