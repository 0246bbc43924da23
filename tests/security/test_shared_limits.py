"""Two api processes on one Redis share one rate limit (what `docker compose` runs, and replicas).

Real uvicorn subprocesses on one SQLite database and one Redis; requests alternate between
them. Each process alone would allow the whole budget, so a 429 before 2x the budget means
the count is shared."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.live import REDIS_URL, check_redis, free_port, wait_ready
from tests.security.harness import ROOT, bearer, migrated_template

BURST = 4  # requests per window (1 per minute sustained: the window is 4 minutes, no test waits that long)


@pytest.fixture
def two_apis(tmp_path) -> Iterator[tuple[list[str], str]]:
    """([url of api 1, url of api 2], a valid key), both processes with the same env."""
    check_redis()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(migrated_template(), home / "regdiff.db")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGDIFF_")}, "REGDIFF_HOME": str(home),
           "REGDIFF_AUTH": "required", "REGDIFF_RATE_LIMIT_PER_MINUTE": "1", "REGDIFF_RATE_LIMIT_BURST": str(BURST),
           "REGDIFF_RATE_LIMIT_STORAGE": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    created = subprocess.run([sys.executable, "-m", "store.admin", "keys", "create", "--tenant", "shared"], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=True, timeout=240)
    key = created.stdout.strip().splitlines()[-1]
    ports = [free_port(), free_port()]
    apis = [subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
                              str(port)], cwd=ROOT, env=env, stdout=open(home / f"api{port}.log", "wb"),
                             stderr=subprocess.STDOUT, start_new_session=True) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    _forget_address("127.0.0.1")  # a run of this test minutes ago filled the window
    try:
        for api, url in zip(apis, urls):
            wait_ready(api, url, 240, lambda: "\n".join(p.read_text(errors="replace") for p in home.glob("*.log")))
        yield urls, key
    finally:
        for api in apis:
            api.terminate()
            api.wait(30)
        _forget_address("127.0.0.1")


def _forget_address(address: str) -> None:
    from limits.storage import storage_from_string

    from api.rate_limiter import KEY_PREFIX, window_item

    storage = storage_from_string(REDIS_URL, key_prefix=KEY_PREFIX)
    storage.clear(window_item(1, BURST).key_for(f"address:{address}"))


def _alternate(urls: list[str], headers: dict[str, str], n: int) -> list[httpx.Response]:
    return [httpx.get(f"{urls[i % 2]}/v1/runs", headers=headers, timeout=30) for i in range(n)]


def test_two_api_processes_share_one_limit_per_key_and_per_address(two_apis):
    urls, key = two_apis
    answers = _alternate(urls, bearer(key), BURST + 2)
    assert [r.status_code for r in answers] == [200] * BURST + [429, 429]
    assert [r.headers["ratelimit-remaining"] for r in answers[:BURST]] == [str(BURST - 1 - i) for i in range(BURST)]
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers[BURST:])

    flood = _alternate(urls, bearer("rdk_invented"), BURST + 2)  # invalid keys: the address's window
    assert [r.status_code for r in flood] == [401] * BURST + [429, 429]
    assert flood[-1].headers["content-type"] == "application/problem+json"
