"""Fixtures for the dashboard, docs and metrics tests: two live services, one per backend and per
auth mode (keys required on PostgreSQL+Redis, keys off on the embedded pair), each with one
trained run; and a headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.conftest import TINY_RUN, _start
from tests.live import Service, free_port, wait_for

CHROMIUM = os.environ.get("REGDIFF_TEST_CHROMIUM", "/usr/bin/chromium")
# No crash is simulated here: default-length leases, so a busy machine never takes the run from its
# worker (the 3 s leases of tests/live.py expire when a shared CPU starves the heartbeat).
CALM = {"REGDIFF_LEASE_SECONDS": "30", "REGDIFF_REQUEUE_AFTER_SECONDS": "60"}


@dataclass
class Deployment:
    """A live service, the headers its clients need, and a run it trained."""

    service: Service
    headers: dict[str, str]
    key: str | None
    run: dict
    worker_metrics_port: int

    @property
    def url(self) -> str:
        return self.service.url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)


def create_key(service: Service, tenant: str = "ui-tenant") -> str:
    """An API key written straight into the service's database (what `regdiff-admin keys create` does)."""
    from store import keys

    url = service.env.get("REGDIFF_DATABASE_URL") or f"sqlite:///{(service.home / 'regdiff.db').resolve()}"
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            _, key = keys.create_key(session=session, tenant=tenant)
    finally:
        engine.dispose()
    return key


def _deploy(service: Service, key: str | None, worker_port: int) -> Deployment:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        run = client.post("/v1/runs", json=TINY_RUN).raise_for_status().json()
        run = wait_for(client, run["id"], timeout=900)  # generous: a shared CPU may be slow
    assert run["status"] == "succeeded", run
    return Deployment(service, headers, key, run, worker_port)


@pytest.fixture(scope="session", params=["keys-on", "keys-off"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """keys-on: PostgreSQL + Redis with REGDIFF_AUTH=required; keys-off: the embedded default."""
    keys_on = request.param == "keys-on"
    worker_port = free_port()
    env = {"REGDIFF_WORKER_METRICS_PORT": str(worker_port), **CALM}
    services = (_start("postgres-redis", tmp_path_factory, REGDIFF_AUTH="required", **env) if keys_on
                else _start("embedded", tmp_path_factory, **env))
    try:
        service = next(services)
        yield _deploy(service, create_key(service) if keys_on else None, worker_port)
    finally:
        services.close()  # stops the service and drops its database


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Skipped where no Chromium is installed; under CI a missing browser fails instead."""
    if not shutil.which(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="package")  # closed after tests/ui: its event loop would break a later asyncio.run()
def browser(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield browser
        browser.close()
