"""Live services for the tests: real PostgreSQL/Redis or the embedded SQLite pair, and the
api and a Celery worker as real subprocesses (the worker can be killed with -9 and replaced)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("REGDIFF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REGDIFF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Short leases so crash tests finish in seconds.
FAST = {
    "REGDIFF_LEASE_SECONDS": "3",
    "REGDIFF_REQUEUE_AFTER_SECONDS": "5",
    "REGDIFF_RECONCILE_EVERY_SECONDS": "1",
    "REGDIFF_LOG_FLUSH_SECONDS": "0",
    "REGDIFF_DEVICE": "cpu",
    # One intra-op thread per process: the api, the worker and pytest share 2 cores, and torch's two
    # threads per process then wait on each other at every op of these tiny models (measured: 30 steps
    # of unet-xs took 2-4 s with one thread and 46-52 s with two while other processes were busy).
    "OMP_NUM_THREADS": "1",
    "REGDIFF_EVAL_SAMPLES": "0",
    # Small upload limits so the oversize and zip-bomb tests send and build little; a quick classifier.
    "REGDIFF_MAX_UPLOAD_BYTES": str(4 << 20),
    "REGDIFF_MAX_UPLOAD_UNCOMPRESSED_BYTES": str(32 << 20),
    "REGDIFF_EVAL_CLASSIFIER_STEPS": "150",
    # The limiter is tested in tests/security; here polling loops and quick 422 cases would trip it.
    "REGDIFF_RATE_LIMIT_PER_MINUTE": "0",
}


def unreachable(what: str, exc: Exception) -> None:
    """Under CI a missing service is a failure, never a silent skip."""
    message = f"{what} unreachable: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def fresh_postgres_database() -> tuple[str, callable]:
    """A new database on the test server; returns its URL and a function that drops it."""
    name = f"regdiff_{uuid.uuid4().hex[:10]}"
    try:
        # pre-ping: a PostgreSQL restart during the test (test_faults.py) leaves a dead pooled connection
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unreachable("PostgreSQL", exc)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}", drop


def check_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:
        unreachable("Redis", exc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_env(backend: str, home: Path) -> tuple[dict[str, str], callable]:
    """REGDIFF_* for one backend, plus a cleanup function."""
    env = {"REGDIFF_HOME": str(home), "REGDIFF_QUEUE": f"gpu-test-{uuid.uuid4().hex[:8]}", **FAST}
    if backend == "embedded":
        return env, lambda: None
    check_redis()
    url, drop = fresh_postgres_database()
    env.update(REGDIFF_DATABASE_URL=url, REGDIFF_BROKER_URL=REDIS_URL)
    return env, drop


def wait_ready(api: subprocess.Popen, url: str, timeout: float, logs: Callable[[], str]) -> None:
    """Until the api process at `url` answers /readyz 200; RuntimeError with its logs if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"api exited:\n{logs()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"api not ready in {timeout} s:\n{logs()}")


@dataclass
class Service:
    """The api and one worker on one configuration; `url` is the api's base URL."""

    backend: str
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    workers_started: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "REGDIFF_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.home / log_name, "ab")
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self._env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=self._env(),
                       check=True, capture_output=True)

    def start(self) -> Service:
        self.migrate()
        self.api = self._spawn(["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
                                str(self.port)], "api.log")
        self.start_worker()
        self._wait_ready()
        return self

    def start_worker(self) -> None:
        self.worker = self.spawn_worker()

    def spawn_worker(self) -> subprocess.Popen:
        """One more worker process, in a process group of its own (several may run at once)."""
        self.workers_started += 1
        return self._spawn(["-m", "worker", "--hostname", f"w{self.workers_started}@%h"],
                           f"worker{self.workers_started}.log")

    def kill_worker(self) -> None:
        """SIGKILL: no warm shutdown, no ack, no lease release: a crashed machine."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def stop_worker(self, timeout: float = 120) -> int:
        """SIGTERM: Celery's warm shutdown, what a deploy sends; waits for the exit, returns its code."""
        os.killpg(self.worker.pid, signal.SIGTERM)
        return self.worker.wait(timeout=timeout)

    def _wait_ready(self, timeout: float = 120) -> None:
        wait_ready(self.api, self.url, timeout, self.logs)

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.home.glob("*.log")))

    def stop(self) -> None:
        for proc in (self.api, self.worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.api, self.worker):
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def wait_for(client: httpx.Client, run_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 240) -> dict:
    """Poll a run until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
        if run["status"] in statuses:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")


def purge_broker(service: Service) -> None:
    """Drop every queued message, as a Redis restart without persistence would."""
    if service.backend == "embedded":
        import sqlite3

        with sqlite3.connect(service.home / "broker.db") as conn:
            conn.execute("DELETE FROM kombu_message")
        return
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def wait_until(predicate, timeout: float = 120, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")
