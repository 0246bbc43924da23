"""Fixtures: `service` is a live api + worker on the embedded configuration and on
PostgreSQL + Redis (the same tests run on both, unless a test is marked
`backends("postgres-redis")`); `client` is an httpx client for it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import httpx
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.live import Service, backend_env

BACKENDS = ["embedded", "postgres-redis"]


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis (schemathesis' engine) writes caches under ./.hypothesis even with its example
    database off: point it at a temporary folder, so the suite leaves no files in the tree."""
    config.hypothesis_home = tempfile.mkdtemp(prefix="regdiff-hypothesis-")
    set_hypothesis_home_dir(config.hypothesis_home)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "hypothesis_home", ""), ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the backends a test's `backends(...)` marker does not name: what it checks (statistics,
    say) does not depend on the storage, and training it twice would only double its minutes."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        backend = getattr(item, "callspec", None) and item.callspec.params.get("service")
        (drop if marker and backend and backend not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _start(backend: str, tmp_path_factory: pytest.TempPathFactory, **extra_env: str) -> Iterator[Service]:
    home = tmp_path_factory.mktemp(f"regdiff-{backend}")
    env, cleanup = backend_env(backend, home)
    service = Service(backend, home, {**env, **extra_env})
    try:
        yield service.start()
    except Exception:
        print(service.logs())
        raise
    finally:
        service.stop()
        cleanup()


@pytest.fixture(scope="session", params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from _start(request.param, tmp_path_factory)


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30, headers={"X-Regdiff-Client": "1"}) as c:  # as the SDK
        yield c


TINY_RUN = {
    "dataset": "digits",
    "regularizer": "tv",
    "lambda": 0.1,
    "model": {"preset": "unet-xs"},
    "train": {"steps": 20, "batch_size": 16, "log_every": 5},
    "preview": {"n": 4, "steps": 10},
    "checkpoint_every": 10,
}
