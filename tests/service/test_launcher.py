"""`make run` supervises: a worker killed with -9 (the OOM killer) comes back while the api
keeps serving, the run it held succeeds at its full step count, and Ctrl-C exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    return Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def _pid(home: Path, name: str, seen: set[int]) -> int | None:
    try:
        pid = int((home / "run" / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    seen.add(pid)
    return pid


def test_a_killed_worker_is_restarted_and_its_run_succeeds(tmp_path):
    port = free_port()
    # A lease with slack for a loaded machine: the worker loads its data before the heartbeat starts.
    env = {**os.environ, **FAST, "REGDIFF_LEASE_SECONDS": "10", "REGDIFF_HOME": str(tmp_path), "REGDIFF_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "launcher.log", "wb")
    launcher = subprocess.Popen([sys.executable, "-m", "api.launcher"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    seen: set[int] = set()  # every child pid the launcher wrote, checked for orphans at the end
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_until(lambda: _ready(client), timeout=120)
            spec = {**TINY_RUN, "train": {"steps": 60, "batch_size": 8, "log_every": 5}, "checkpoint_every": 10}
            run_id = client.post("/v1/runs", json=spec).raise_for_status().json()["id"]
            wait_until(lambda: client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"], timeout=180)
            first, api = _pid(tmp_path, "worker", seen), _pid(tmp_path, "api", seen)
            os.kill(first, signal.SIGKILL)

            assert client.get("/healthz").status_code == 200  # the api did not go down with its worker
            second = wait_until(lambda: (p := _pid(tmp_path, "worker", seen)) != first and p, timeout=60)
            done = wait_for(client, run_id)
            assert done["status"] == "succeeded", done["error"]
            assert done["step"] == 60 and done["attempts"] >= 2
            assert _alive(second) and _pid(tmp_path, "api", seen) == api
            assert client.get("/healthz").status_code == 200

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 0
        assert not [pid for pid in seen if _alive(pid)]  # no orphans
    finally:
        if launcher.poll() is None:
            launcher.terminate()
            launcher.wait(timeout=60)
        for pid in seen:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        log.close()
        print((tmp_path / "launcher.log").read_text(errors="replace")[-4000:])


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False
