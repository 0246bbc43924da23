"""Store-test fixtures: `session` on a real database (SQLite and PostgreSQL) built by the migration."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.orm import Session

from store.db import make_engine
from tests.live import ROOT, fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request, tmp_path):
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 's.db'}"
    else:
        url, drop = fresh_postgres_database()
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True,
                   env={"REGDIFF_DATABASE_URL": url, "PATH": ""})
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()
    if drop is not None:
        drop()
