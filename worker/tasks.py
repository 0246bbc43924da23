"""Celery tasks: thin, take ids, reload everything from the database, idempotent."""

from __future__ import annotations

import os
import socket

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from worker.celery_app import SAMPLE_TASK, TRAIN_TASK, app
from worker.heartbeat import SHUTTING_DOWN
from worker.reconciler import start_reconciler_thread
from worker.samples import run_sampling
from worker.training import run_training


def owner() -> str:
    """Who holds a lease: host and process, computed in the process that runs the task."""
    return f"{socket.gethostname()}:{os.getpid()}"


_reconciler_stop = None


@app.task(name=TRAIN_TASK)
def train_run(run_id: str) -> None:
    run_training(run_id, owner=owner())


@app.task(name=SAMPLE_TASK)
def sample(sample_id: str) -> None:
    run_sampling(sample_id, owner=owner())


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    global _reconciler_stop
    _reconciler_stop = start_reconciler_thread()


@worker_shutdown.connect
def _stop_reconciler(**_: object) -> None:
    if _reconciler_stop is not None:
        _reconciler_stop.set()


@worker_shutting_down.connect
def _stop_jobs(**_: object) -> None:
    """Warm shutdown (a deploy's SIGTERM, Ctrl-C): the job in hand checkpoints at its next step
    and goes back to the queue without spending an attempt, so the worker exits in seconds."""
    SHUTTING_DOWN.set()
