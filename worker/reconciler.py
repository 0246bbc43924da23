"""Brings back jobs the broker lost or whose worker died; the database is the truth.

Runs in every worker (a daemon thread), but one pass acts at a time (an advisory lock on
PostgreSQL, store/leases.py::reconciler_turn). It never floods the queue: a queued job waiting
behind a long one still has its message, so the reconciler only sends what the broker's queue
length proves missing, at most one wake-up per queued job:

    missing = queued jobs - messages waiting in the broker

A job whose worker died (lease expired) is always re-enqueued (its message went with the
worker); of the jobs queued longer than REGDIFF_REQUEUE_AFTER_SECONDS, the `missing` ones
with the oldest wake-up get a new one. A run gets a "requeued" warning event the first time
only, never one per pass. It also prunes the delivered rows of the embedded SQLite broker.
"""

from __future__ import annotations

import logging
import threading

from store import leases, runs
from store.db import session_scope
from store.settings import get_settings
from store.tables import Run, SampleJob
from worker.celery_app import enqueue_sample, enqueue_train, prune_consumed, waiting_messages

log = logging.getLogger(__name__)


def reconcile_once() -> dict[str, list[str]]:
    settings = get_settings()
    waiting = waiting_messages()  # asked before the transaction: a slow broker holds no lock
    with session_scope() as session:
        if not leases.reconciler_turn(session):
            return {"runs": [], "samples": [], "cancelled": []}
        abandoned = runs.cancel_abandoned(session=session)
        runs_lost, samples_lost = leases.expired(session, Run), leases.expired(session, SampleJob)
        missing = 0
        if waiting is not None:  # an unreachable broker proves nothing (and takes no message)
            queued = leases.queued_count(session, Run) + leases.queued_count(session, SampleJob)
            missing = queued - waiting - len(runs_lost) - len(samples_lost)
        runs_stale = leases.stale_queued(session, Run, older_than=settings.requeue_after_seconds, limit=missing)
        samples_stale = leases.stale_queued(session, SampleJob, older_than=settings.requeue_after_seconds,
                                            limit=missing - len(runs_stale))
        runs_back, samples_back = runs_lost + runs_stale, samples_lost + samples_stale
        _first_requeue_events(session, runs_lost, "its worker was lost; it resumes from its latest checkpoint")
        _first_requeue_events(session, runs_stale, "its wake-up message was lost (a broker restart)")
    for run_id in runs_back:
        enqueue_train(run_id)
    for sample_id in samples_back:
        enqueue_sample(sample_id)
    pruned = prune_consumed()
    if runs_back or samples_back or abandoned:
        log.warning("reconciler: runs %s, samples %s re-enqueued; %s cancelled", runs_back, samples_back, abandoned)
    if pruned:
        log.info("reconciler: %d delivered broker messages pruned", pruned)
    return {"runs": runs_back, "samples": samples_back, "cancelled": abandoned}


def _first_requeue_events(session, run_ids: list[str], why: str) -> None:
    """One "requeued" warning per run at most: a run re-enqueued again (e.g. left queued by its
    tenant's running cap, its message dropped) adds nothing to its log."""
    seen = runs.ever_requeued(session=session, run_ids=run_ids)
    for run_id in run_ids:
        if run_id not in seen:
            runs.add_event(session=session, run_id=run_id, type="requeued", level="warning",
                           message=f"re-enqueued by the reconciler: {why}")


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
