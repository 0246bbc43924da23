"""Alembic is the only way the schema changes: it must build it from empty and round-trip."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect

from store.tables import Base
from tests.live import ROOT, fresh_postgres_database


def alembic(url: str, *args: str) -> None:
    env = {**os.environ, "REGDIFF_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, check=True, capture_output=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    url, drop = fresh_postgres_database()
    yield url
    drop()


def test_upgrade_from_empty_matches_the_tables_and_round_trips(database_url):
    alembic(database_url, "upgrade", "head")
    engine = create_engine(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    for table in Base.metadata.sorted_tables:
        columns = {c["name"] for c in inspect(engine).get_columns(table.name)}
        assert columns == set(table.columns.keys()), table.name

    alembic(database_url, "downgrade", "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    alembic(database_url, "upgrade", "head")
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_agree(database_url):
    """Autogenerate against a migrated database finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    alembic(database_url, "upgrade", "head")
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
