"""Fixtures: `make_client(**env)` gives a TestClient on a real app and a fresh migrated SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from tests.security.harness import isolated_app


@pytest.fixture
def make_client(tmp_path) -> Iterator[Callable[..., TestClient]]:
    """make_client(base_url=..., client=(host, port), **REGDIFF_env) -> a started TestClient; one per test."""
    with ExitStack() as stack:
        count = 0

        def make(base_url: str = "http://testserver", client: tuple[str, int] = ("testclient", 50000),
                 **env: str) -> TestClient:
            nonlocal count
            count += 1
            assert count == 1, "one app per test: the settings are process-wide"
            app = stack.enter_context(isolated_app(tmp_path / "home", **env))
            return stack.enter_context(TestClient(app, base_url=base_url, client=client,
                                                      raise_server_exceptions=False))

        yield make
