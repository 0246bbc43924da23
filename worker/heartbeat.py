"""A thread that renews a job's lease and notices why the job should stop.

The training loop only reads `stop_reason` (no database round trip inside the step);
the heartbeat does the I/O every third of the lease.
"""

from __future__ import annotations

import logging
import threading
import time

from store import leases, runs
from store.db import session_scope
from store.settings import get_settings
from store.tables import Run

log = logging.getLogger(__name__)
# Set by the worker's warm shutdown (SIGTERM/SIGINT, worker/tasks.py): every job in this process
# stops at its next step, keeps what it did, and goes back to the queue for another worker.
SHUTTING_DOWN = threading.Event()


class Heartbeat:
    def __init__(self, job: leases.Job, job_id: str, *, lease: leases.Lease, time_limit: float | None = None):
        self.job, self.job_id, self.lease = job, job_id, lease
        self.lease_seconds = get_settings().lease_seconds
        self.deadline = time.monotonic() + time_limit if time_limit else None
        self.stop_reason: str | None = None  # "cancelled" | "lease_lost" | "time_limit" | "shutdown"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def limit_to(self, seconds: float) -> None:
        """Stop with "time_limit" `seconds` from now (known only once the job is loaded)."""
        self.deadline = time.monotonic() + seconds

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stop_reason = self.stop_reason or "time_limit"
        if SHUTTING_DOWN.is_set():
            self.stop_reason = self.stop_reason or "shutdown"
        return self.stop_reason is not None

    def _loop(self) -> None:
        while not self._done.wait(self.lease_seconds / 3):
            try:
                self.beat()
            except Exception:  # a database hiccup: try again next beat, the lease has slack
                log.exception("heartbeat for %s failed", self.job_id)

    def beat(self) -> None:
        with session_scope() as session:
            if not leases.renew(session, self.job, self.job_id, lease=self.lease, lease_seconds=self.lease_seconds):
                self.stop_reason = "lease_lost"
            elif self.job is Run and runs.cancel_requested(session=session, run_id=self.job_id):
                self.stop_reason = "cancelled"
