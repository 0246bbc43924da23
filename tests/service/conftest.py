"""Service-test fixtures besides tests/conftest.py: a second tenant's credentials."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.live import Service


@pytest.fixture(scope="session")
def other_tenant(service: Service) -> dict[str, str]:
    """Authorization headers of another tenant: an API key written straight into the service's database."""
    from store import keys

    url = service.env.get("REGDIFF_DATABASE_URL") or f"sqlite:///{(service.home / 'regdiff.db').resolve()}"
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            _, key = keys.create_key(session=session, tenant="other-tenant")
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}
