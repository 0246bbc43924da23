"""Brings back jobs the broker lost or whose worker died; the database is the truth.

Runs in every worker (a daemon thread); its updates are conditional, so several
reconcilers at once do no harm: at worst a job gets two messages and one claim wins.
"""

from __future__ import annotations

import logging
import threading

from store import leases, runs
from store.db import session_scope
from store.settings import get_settings
from store.tables import Run, SampleJob
from worker.celery_app import enqueue_sample, enqueue_train

log = logging.getLogger(__name__)


def reconcile_once() -> dict[str, list[str]]:
    settings = get_settings()
    with session_scope() as session:
        abandoned = runs.cancel_abandoned(session=session)
        runs_back = leases.expired(session, Run) + leases.stale_queued(
            session, Run, older_than=settings.requeue_after_seconds)
        samples_back = leases.expired(session, SampleJob) + leases.stale_queued(
            session, SampleJob, older_than=settings.requeue_after_seconds)
        for run_id in runs_back:
            runs.add_event(session=session, run_id=run_id, type="requeued", level="warning",
                           message="re-enqueued by the reconciler (worker lost or message lost)")
    for run_id in runs_back:
        enqueue_train(run_id)
    for sample_id in samples_back:
        enqueue_sample(sample_id)
    if runs_back or samples_back or abandoned:
        log.warning("reconciler: runs %s, samples %s re-enqueued; %s cancelled", runs_back, samples_back, abandoned)
    return {"runs": runs_back, "samples": samples_back, "cancelled": abandoned}


def start_reconciler_thread() -> threading.Event:
    """Reconcile every REGDIFF_RECONCILE_EVERY_SECONDS until the returned event is set."""
    stop = threading.Event()
    interval = get_settings().reconcile_every_seconds

    def loop() -> None:
        while not stop.wait(interval):
            try:
                reconcile_once()
            except Exception:
                log.exception("reconciler pass failed")

    threading.Thread(target=loop, name="reconciler", daemon=True).start()
    return stop
