"""Store functions against a real (SQLite) database built by the migration."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.orm import Session

from store import leases, runs
from store.db import make_engine
from store.tables import Run
from tests.live import ROOT

SPEC = {"train": {"steps": 10}}


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True,
                   env={"REGDIFF_DATABASE_URL": url, "PATH": ""})
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_checkpoint_retention_keeps_the_last_n_and_the_final(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    for step in range(1, 7):
        runs.save_checkpoint(session=session, run_id=run.id, step=step, data=b"x", is_final=False, keep=2)
    runs.save_checkpoint(session=session, run_id=run.id, step=7, data=b"x", is_final=True, keep=2)
    runs.save_checkpoint(session=session, run_id=run.id, step=8, data=b"x", is_final=False, keep=2)
    kept = [(c.step, c.is_final) for c in runs.list_checkpoints(session=session, run_id=run.id)]
    assert kept == [(6, False), (7, True), (8, False)]


def test_one_claim_wins_and_an_expired_lease_can_be_taken_over(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    first = leases.claim(session, Run, run.id, owner="a", lease_seconds=60)
    second = leases.claim(session, Run, run.id, owner="b", lease_seconds=60)
    assert (first.won, second.won) == (True, False)
    assert leases.renew(session, Run, run.id, owner="a", lease_seconds=60)
    assert not leases.renew(session, Run, run.id, owner="b", lease_seconds=60)

    leases.renew(session, Run, run.id, owner="a", lease_seconds=-1)  # a's worker stops beating
    assert leases.expired(session, Run) == [run.id]
    takeover = leases.claim(session, Run, run.id, owner="b", lease_seconds=60)
    assert takeover.won and takeover.attempts == 2
    assert not leases.renew(session, Run, run.id, owner="a", lease_seconds=60)  # a learns it lost


def test_idempotency_key_replays_and_refuses_another_body(session):
    run, created = runs.create_run(session=session, tenant="t", spec=SPEC, idempotency_key="k")
    again, created_again = runs.create_run(session=session, tenant="t", spec=SPEC, idempotency_key="k")
    assert created and not created_again and again.id == run.id
    with pytest.raises(runs.IdempotencyConflict):
        runs.create_run(session=session, tenant="t", spec={"train": {"steps": 11}}, idempotency_key="k")
    other_tenant, created_other = runs.create_run(session=session, tenant="u", spec=SPEC, idempotency_key="k")
    assert created_other and other_tenant.id != run.id


def test_keyset_pages_cover_every_row_once_newest_first_and_refuse_unknown_cursors(session):
    """Runs and sweeps page through the one helper; the oracle is a plain sort of all rows.

    Rows share created_at in pairs (ties are broken by id), and another tenant's rows
    interleave; a foreign or missing cursor raises instead of restarting at page 1."""
    from datetime import UTC, datetime, timedelta

    from store import sweeps
    from store.pagination import UnknownCursor

    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(7):
        for tenant in ("t", "u"):
            run, _ = runs.create_run(session=session, tenant=tenant, spec=SPEC)
            run.created_at = start + timedelta(seconds=i // 2)
            sweep, _ = sweeps.create_sweep(session=session, tenant=tenant, base={}, vary={}, specs=[])
            sweep.created_at = start + timedelta(seconds=i // 2)
    session.commit()
    for list_rows, table in ((runs.list_runs, Run), (sweeps.list_sweeps, sweeps.Sweep)):
        mine = [r for r in session.query(table).all() if r.tenant == "t"]
        expected = [r.id for r in sorted(mine, key=lambda r: (r.created_at, r.id), reverse=True)]
        seen, after, more = [], None, True
        while more:
            page, more = list_rows(session=session, tenant="t", limit=3, after=after)
            seen += [r.id for r in page]
            after = page[-1].id
        assert seen == expected
        foreign = next(r.id for r in session.query(table).all() if r.tenant == "u")
        for cursor in (foreign, "nope_123"):
            with pytest.raises(UnknownCursor):
                list_rows(session=session, tenant="t", limit=3, after=cursor)
