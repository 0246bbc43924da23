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
from worker.webhooks import start_delivery_thread


def owner() -> str:
    """Who holds a lease: host and process, computed in the process that runs the task."""
    return f"{socket.gethostname()}:{os.getpid()}"


_stops = []  # the stop events of the worker's background loops


@app.task(name=TRAIN_TASK)
def train_run(run_id: str) -> None:
    run_training(run_id, owner=owner())


@app.task(name=SAMPLE_TASK)
def sample(sample_id: str) -> None:
    run_sampling(sample_id, owner=owner())


@worker_ready.connect
def _start_loops(**_: object) -> None:
    """The reconciler, and the webhook deliveries (worker/webhooks.py), beside the tasks."""
    _stops.extend([start_reconciler_thread(), start_delivery_thread()])


@worker_shutdown.connect
def _stop_loops(**_: object) -> None:
    for stop in _stops:
        stop.set()


@worker_shutting_down.connect
def _stop_jobs(**_: object) -> None:
    """Warm shutdown (a deploy's SIGTERM, Ctrl-C): the job in hand checkpoints at its next step
    and goes back to the queue without spending an attempt, so the worker exits in seconds."""
    SHUTTING_DOWN.set()
