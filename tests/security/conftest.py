"""Fixtures: `make_client(**env)` gives a TestClient on a real app and a fresh migrated SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from tests.security.harness import SDK_HEADERS, isolated_app


@pytest.fixture
def make_client(tmp_path) -> Iterator[Callable[..., TestClient]]:
    """make_client(base_url=, client=(host, port), headers=, database_url=, **REGDIFF_env) -> a started TestClient.

    One per test. Like the SDK, it calls http://localhost and sends `X-Regdiff-Client` (the
    header that lets a keyless POST through the cross-site rule) unless `headers` says otherwise. The database is a copy of a migrated SQLite file unless `database_url` names
    an empty one (e.g. PostgreSQL), which is migrated first."""
    with ExitStack() as stack:
        count = 0

        def make(base_url: str = "http://localhost", client: tuple[str, int] = ("testclient", 50000),
                 headers: dict[str, str] | None = None, database_url: str | None = None, **env: str) -> TestClient:
            nonlocal count
            count += 1
            assert count == 1, "one app per test: the settings are process-wide"
            app = stack.enter_context(isolated_app(tmp_path / "home", database_url=database_url, **env))
            return stack.enter_context(TestClient(app, base_url=base_url, client=client,
                                                  headers=SDK_HEADERS if headers is None else headers,
                                                  raise_server_exceptions=False))

        yield make
