"""The reconciler against a real database and broker (SQLite pair, PostgreSQL + Redis): it
re-sends only the wake-ups the broker's queue proves missing, one event per run at most."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from store import db, runs
from store.leases import reconciler_turn
from store.settings import get_settings
from store.tables import Run, RunEvent, utcnow
from tests.live import ROOT, backend_env
from worker import celery_app

SPEC = {"train": {"steps": 10}}


def _reset_caches() -> None:
    for cached in (get_settings, db.engine, db._factory):
        cached.cache_clear()


@pytest.fixture(params=["embedded", "postgresql"])
def backend(request, tmp_path, monkeypatch):
    env, drop = backend_env(request.param, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True,
                   env={**env, "PATH": ""})
    _reset_caches()
    monkeypatch.setattr(celery_app, "app", celery_app.make_celery())
    yield request.param
    _purge()
    db.engine().dispose()
    _reset_caches()
    drop()


def _purge() -> None:
    with celery_app.app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(get_settings().queue)
        except conn.channel_errors:
            pass


def _queue_behind_a_long_run(n: int) -> list[str]:
    """One running run with a live lease, `n` queued behind it, each with its message sent
    long ago (older than REGDIFF_REQUEUE_AFTER_SECONDS)."""
    from store import leases

    with db.session_scope() as session:
        long, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
        leases.claim(session, Run, long.id, owner="w", lease_seconds=3600)
        ids = [runs.create_run(session=session, tenant="t", spec=SPEC)[0].id for _ in range(n)]
        session.execute(update(Run).where(Run.id.in_(ids)).values(enqueued_at=utcnow() - timedelta(hours=1)))
    for run_id in ids:
        celery_app.enqueue_train(run_id)
    return ids


def _requeued_events() -> int:
    with db.session_scope() as session:
        return session.scalar(select(func.count()).where(RunEvent.type == "requeued"))


def test_waiting_runs_get_no_second_message_and_lost_ones_exactly_one(backend):
    from worker.reconciler import reconcile_once

    ids = _queue_behind_a_long_run(20)
    assert celery_app.waiting_messages() == 20
    for _ in range(5):
        assert reconcile_once()["runs"] == []
    assert celery_app.waiting_messages() == 20 and _requeued_events() == 0

    _purge()  # a broker restart without persistence: every wake-up is lost
    with db.session_scope() as session:
        session.execute(update(Run).where(Run.id.in_(ids)).values(enqueued_at=utcnow() - timedelta(hours=1)))
    assert sorted(reconcile_once()["runs"]) == sorted(ids)
    for _ in range(5):
        with db.session_scope() as session:  # stale again: only the queue length holds them back
            session.execute(update(Run).where(Run.id.in_(ids)).values(enqueued_at=utcnow() - timedelta(hours=1)))
        assert reconcile_once()["runs"] == []
    assert celery_app.waiting_messages() == 20 and _requeued_events() == 20


def test_delivered_messages_of_the_sqlite_broker_are_pruned(backend):
    if backend != "embedded":
        pytest.skip("Redis deletes what it delivers")
    from worker.reconciler import reconcile_once

    _queue_behind_a_long_run(3)
    with celery_app.app.connection_for_read() as conn:
        assert conn.default_channel.basic_get(get_settings().queue, no_ack=True) is not None
    assert len(reconcile_once()["runs"]) == 1  # the delivered one's run is still queued: one new wake-up
    broker = db.make_engine(get_settings().resolved_broker_url.removeprefix("sqla+"))
    with broker.connect() as conn:
        rows = conn.execute(text("SELECT visible FROM kombu_message")).scalars().all()
    broker.dispose()
    assert rows == [1, 1, 1]  # the delivered row is gone, the three waiting ones stay


def test_one_reconciler_acts_at_a_time(backend):
    if backend != "postgresql":
        pytest.skip("SQLite runs one embedded worker and serialises writers")
    from worker.reconciler import reconcile_once

    ids = _queue_behind_a_long_run(2)
    _purge()
    with db.new_session() as holder, holder.begin():
        assert reconciler_turn(holder)  # another worker's pass holds the lock
        assert reconcile_once()["runs"] == []
    assert sorted(reconcile_once()["runs"]) == sorted(ids)
