"""`make run`: migrate, then run the api and one Celery worker under a small supervisor.

A worker that dies (a crash, the kernel's OOM killer) is restarted with backoff while the
api keeps serving; the run it held resumes once its lease expires (the new worker's
reconciler re-enqueues it). Ctrl-C or SIGTERM stops both and exits 0. The launcher exits
non-zero only when it gives up: the api died, or the worker died too often in a short time;
the reason goes to stderr. Children's pids are in REGDIFF_HOME/run/{api,worker}.pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from store.settings import get_settings

RESTART_LIMIT = 5  # worker restarts within RESTART_WINDOW seconds before the launcher gives up
RESTART_WINDOW = 300.0
MAX_BACKOFF = 30.0  # seconds; the first restart waits 1 s, then 2, 4, ... up to this
STOP_GRACE = 30.0  # seconds the children get to stop before a SIGKILL


class _Stop(Exception):
    """SIGINT or SIGTERM reached the launcher: a clean stop."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _say(message: str) -> None:
    print(f"regdiff launcher: {message}", file=sys.stderr, flush=True)


def _die_with_launcher() -> None:
    """Linux: a child gets SIGKILL when the launcher itself is killed (-9), so none is orphaned."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


class Child:
    """One supervised process in its own process group, its pid in a file under run/."""

    def __init__(self, name: str, args: list[str], pid_dir: Path):
        self.name, self.args, self.pid_file = name, args, pid_dir / f"{name}.pid"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # A session of its own: a terminal's Ctrl-C reaches the launcher only, which stops it in order.
        self.proc = subprocess.Popen([sys.executable, *self.args], start_new_session=True,
                                     preexec_fn=_die_with_launcher)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        _say(f"{self.name} started (pid {self.proc.pid})")

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{self.name} did not stop in {STOP_GRACE:g} s; killing it")
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.pid_file.unlink(missing_ok=True)


class Supervisor:
    def __init__(self, api: Child, worker: Child):
        self.api, self.worker = api, worker
        self.restarts: deque[float] = deque()

    def watch(self) -> str:
        """Block until the launcher must give up; returns why."""
        while True:
            time.sleep(0.5)
            if (code := self.api.exit_code()) is not None:
                return f"the api exited with code {code}"
            if (code := self.worker.exit_code()) is not None:
                reason = self._restart_worker(code)
                if reason:
                    return reason

    def _restart_worker(self, code: int) -> str | None:
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if len(self.restarts) >= RESTART_LIMIT:
            return f"the worker {how}, its {RESTART_LIMIT + 1}th death within {RESTART_WINDOW:g} s; giving up"
        backoff = min(MAX_BACKOFF, 2.0 ** len(self.restarts))
        _say(f"the worker {how}; restarting it in {backoff:g} s (the api keeps serving; "
             "the run it held resumes when its lease expires)")
        self.restarts.append(now)
        time.sleep(backoff)
        self.worker.start()
        return None

    def stop(self) -> None:
        for child in (self.api, self.worker):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in (self.api, self.worker):
            child.wait(deadline)


def main() -> int:
    settings = get_settings()
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], check=True)
    pid_dir = settings.home / "run"
    pid_dir.mkdir(parents=True, exist_ok=True)
    api = Child("api", ["-m", "uvicorn", "api.main:app", "--host", settings.host, "--port", str(settings.port)],
                pid_dir)
    supervisor = Supervisor(api, Child("worker", ["-m", "worker"], pid_dir))
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        supervisor.worker.start()
        api.start()
        url = f"http://{settings.host}:{settings.port}"
        print(f"\nregdiff is up at {url} (docs: {url}/docs); REGDIFF_HOME={settings.home.resolve()}\n"
              f"try:  curl -s -X POST {url}/v1/runs -H 'content-type: application/json' \\\n"
              """        -d '{"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "train": {"steps": 200}}'\n""",
              flush=True)
        failure = supervisor.watch()
    except _Stop as stop:
        failure = None
        _say(f"{stop} received; stopping the api and the worker")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if failure:
        _say(failure)
    supervisor.stop()
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
