"""A real app in this process: `api.main.create_app()` on a fresh SQLite database built by alembic.

Nothing is mocked. The settings, the engine and the session factory are cached per process
(lru_cache), and the Celery app binds its broker at import, so `isolated_app` points all of
them at a fresh REGDIFF_HOME and puts them back afterwards. Alembic runs once per process
(in a subprocess, so its logging setup stays out of this one); each app gets a copy of that
migrated database file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[2]
_TEMPLATE: Path | None = None
# Settings that would otherwise leak in from the developer's or CI's environment.
_CLEARED = ("REGDIFF_DATABASE_URL", "REGDIFF_BROKER_URL", "REGDIFF_HOST", "REGDIFF_AUTH", "REGDIFF_ALLOW_INSECURE",
            "REGDIFF_CORS_ORIGINS")
# Generous defaults so a test meets only the limit it sets.
QUIET = {"REGDIFF_RATE_LIMIT_PER_MINUTE": "0", "REGDIFF_MAX_QUEUED_RUNS": "100000", "REGDIFF_QUEUE": "gpu-security-test"}


def migrated_template() -> Path:
    """A database file migrated to head, built once per process."""
    global _TEMPLATE
    if _TEMPLATE is None:
        home = Path(tempfile.mkdtemp(prefix="regdiff-security-template-"))
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True,
                       capture_output=True, env={**env, "REGDIFF_HOME": str(home)})
        _TEMPLATE = home / "regdiff.db"
    return _TEMPLATE


def _reset_caches() -> None:
    from store import db, settings

    if db.engine.cache_info().currsize:
        db.engine().dispose()
    db.engine.cache_clear()
    db._factory.cache_clear()
    settings.get_settings.cache_clear()


def migrate(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True,
                   env={**env, "REGDIFF_DATABASE_URL": database_url})


@contextmanager
def isolated_app(home: Path, *, database_url: str | None = None, **env: str) -> Iterator[FastAPI]:
    """`create_app()` with REGDIFF_HOME=home and REGDIFF_* `env`, on a copy of the migrated SQLite
    database, or on `database_url` (an empty database: migrated here)."""
    from api.routers import health
    from worker import celery_app

    home.mkdir(parents=True, exist_ok=True)
    if database_url is None:
        shutil.copy(migrated_template(), home / "regdiff.db")
    else:
        migrate(database_url)
        env = {**env, "REGDIFF_DATABASE_URL": database_url}
    wanted = {"REGDIFF_HOME": str(home), **QUIET, **env}
    saved = {k: os.environ.get(k) for k in {*_CLEARED, *wanted}}
    saved_celery = (celery_app.app, health.celery_app)
    try:
        for key in _CLEARED:
            os.environ.pop(key, None)
        os.environ.update(wanted)
        _reset_caches()
        celery_app.app = health.celery_app = celery_app.make_celery()  # the broker of this home
        from api.main import create_app

        yield create_app()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        celery_app.app, health.celery_app = saved_celery
        _reset_caches()


class LiveServer:
    """The app under a real uvicorn on a real socket (TCP, or a UNIX socket at `uds`), in a thread of this process."""

    def __init__(self, app, uds: str | None = None):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, uds=uds,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def create_key(tenant: str) -> tuple[str, str]:
    """(key id, key) for `tenant` in the current app's database."""
    from store import keys
    from store.db import session_scope

    with session_scope() as session:
        row, key = keys.create_key(session=session, tenant=tenant)
        return row.id, key


SDK_HEADERS = {"X-Regdiff-Client": "1"}  # what regdiff_client sends on every request


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(METHOD, path template) of every documented route, from the app's own OpenAPI document."""
    methods = {"get", "post", "put", "patch", "delete"}
    return [(m.upper(), path) for path, item in app.openapi()["paths"].items() for m in item if m in methods]


# The fuzz: keys required (the real code path), no rate limit or queue quota in the way; schemathesis
# calls the app in process as Host "testserver", named as an operator names the server's public name.
FUZZ_ENV = {"REGDIFF_AUTH": "required", "REGDIFF_RATE_LIMIT_PER_MINUTE": "0", "REGDIFF_MAX_QUEUED_RUNS": "100000",
            "REGDIFF_ALLOWED_HOSTS": "testserver"}


def seed_for_fuzz(app: FastAPI) -> tuple[dict[str, str], dict[str, str]]:
    """A key and one of everything for the fuzzing tenant: (auth headers, path parameter -> owned id)."""
    from fastapi.testclient import TestClient

    from tests.security.seed import seed_tenant, valid_checkpoint

    _, key = create_key("fuzzer")
    with TestClient(app) as client:
        owned = seed_tenant(client, bearer(key), "fuzzer", checkpoint=valid_checkpoint())
    return bearer(key), owned
