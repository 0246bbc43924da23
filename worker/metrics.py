"""A worker's own Prometheus series, served on REGDIFF_WORKER_METRICS_PORT (off when unset).

The api's /metrics reports the fleet from the database; this reports one worker process from
its memory: which task it runs, how many it finished, and the pace of the training it runs now.
A worker is one process (solo pool), so one port per worker and no multiprocess mode.
"""

from __future__ import annotations

import logging
import time

from celery.signals import task_postrun, task_prerun
from prometheus_client import Counter, Gauge, start_http_server

log = logging.getLogger(__name__)
TASKS_RUNNING = Gauge("regdiff_worker_tasks_running", "tasks this worker runs now", ["task"])
TASKS_DONE = Counter("regdiff_worker_tasks", "tasks this worker finished, by final Celery state", ["task", "state"])
STEPS_PER_SECOND = Gauge("regdiff_worker_training_steps_per_second",
                         "pace of the run this worker trains, between its last two progress writes (0: idle)")
IMAGES_PER_SECOND = Gauge("regdiff_worker_training_images_per_second", "the same pace times the batch size")


class TrainingPace:
    """Fed each progress write of one training; sets the pace gauges (zeroed when its task ends)."""

    def __init__(self, batch_size: int):
        self.batch_size, self._last = batch_size, None

    def observe(self, step: int) -> None:
        now = time.monotonic()
        if self._last is not None and now > self._last[1] and step > self._last[0]:
            pace = (step - self._last[0]) / (now - self._last[1])
            STEPS_PER_SECOND.set(pace)
            IMAGES_PER_SECOND.set(pace * self.batch_size)
        self._last = (step, now)

    @staticmethod
    def stop() -> None:
        STEPS_PER_SECOND.set(0)
        IMAGES_PER_SECOND.set(0)


def _started(task=None, **_: object) -> None:
    TASKS_RUNNING.labels(task.name).inc()


def _finished(task=None, state: str | None = None, **_: object) -> None:
    TASKS_RUNNING.labels(task.name).dec()
    TASKS_DONE.labels(task.name, state or "UNKNOWN").inc()
    TrainingPace.stop()  # one task at a time: nothing trains here now


def serve(host: str, port: int | None) -> None:
    """Start the exporter thread (when a port is set) and count tasks through Celery's signals."""
    if port is None:
        return
    task_prerun.connect(_started, weak=False)
    task_postrun.connect(_finished, weak=False)
    start_http_server(port, addr=host)
    log.info("worker metrics on http://%s:%d/metrics", host, port)
