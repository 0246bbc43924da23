"""`make run` supervises: a worker killed with -9 (the OOM killer) comes back while the api
keeps serving, the run it held succeeds at its full step count, Ctrl-C exits 0; the launcher
exits non-zero, saying why, only when it gives up (here: the api died)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_RUN
from tests.live import FAST, ROOT, free_port, wait_for, wait_until

pytestmark = pytest.mark.service


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


@dataclass
class Launcher:
    home: Path
    proc: subprocess.Popen
    url: str
    seen: set[int] = field(default_factory=set)  # every child pid it wrote: none may outlive it

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.home / "run" / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        self.seen.add(pid)
        return pid

    def log(self) -> str:
        return (self.home / "launcher.log").read_text(errors="replace")


@contextmanager
def launched(home: Path) -> Iterator[Launcher]:
    port = free_port()
    # A lease with slack for a loaded machine: the worker loads its data before the heartbeat starts.
    env = {**os.environ, **FAST, "REGDIFF_LEASE_SECONDS": "10", "REGDIFF_HOME": str(home),
           "REGDIFF_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    with open(home / "launcher.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api.launcher"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    launcher = Launcher(home, proc, f"http://127.0.0.1:{port}")
    try:
        with httpx.Client(base_url=launcher.url, timeout=10) as client:
            wait_until(lambda: _ready(client), timeout=120)
        yield launcher
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        for pid in launcher.seen:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        print(launcher.log()[-4000:])


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_a_killed_worker_is_restarted_and_its_run_succeeds(tmp_path):
    with launched(tmp_path) as launcher, httpx.Client(base_url=launcher.url, timeout=10) as client:
        spec = {**TINY_RUN, "train": {"steps": 20, "batch_size": 8, "log_every": 5}, "checkpoint_every": 5}
        run_id = client.post("/v1/runs", json=spec).raise_for_status().json()["id"]
        wait_until(lambda: client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"], timeout=300)
        first, api = launcher.pid("worker"), launcher.pid("api")
        os.kill(first, signal.SIGKILL)

        assert client.get("/healthz").status_code == 200  # the api did not go down with its worker
        second = wait_until(lambda: (p := launcher.pid("worker")) != first and p, timeout=60)
        done = wait_for(client, run_id, timeout=600)
        assert done["status"] == "succeeded", done["error"]
        events = client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["data"]
        assert done["step"] == 20 and any(e["type"] == "resumed" for e in events)  # a second claim took it over
        assert _alive(second) and launcher.pid("api") == api
        assert client.get("/healthz").status_code == 200

        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(timeout=60) == 0
        assert not [pid for pid in launcher.seen if _alive(pid)]  # no orphans


def test_the_launcher_gives_up_with_a_reason_when_the_api_dies(tmp_path):
    with launched(tmp_path) as launcher:
        worker = launcher.pid("worker")
        os.kill(launcher.pid("api"), signal.SIGKILL)
        assert launcher.proc.wait(timeout=60) == 1
        assert "the api exited with code -9" in launcher.log()
        assert not _alive(worker)
