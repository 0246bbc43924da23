"""Fixtures for the client's unit tests; the integration tests use the lead's `service`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.fake_api import FakeAPI


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI()
    fake.start()
    yield fake
    fake.stop()
