"""Store functions against real databases (SQLite and PostgreSQL) built by the migration."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store import leases, runs
from store.leases import Lease, LeaseLost
from store.tables import Checkpoint, Run, RunEvent, as_utc
from tests.live import free_port

SPEC = {"train": {"steps": 10}}


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
    assert leases.renew(session, Run, run.id, lease=Lease("a", first.epoch), lease_seconds=60)
    assert not leases.renew(session, Run, run.id, lease=Lease("b", first.epoch), lease_seconds=60)

    leases.renew(session, Run, run.id, lease=Lease("a", first.epoch), lease_seconds=-1)  # a stops beating
    assert leases.expired(session, Run) == [run.id]
    takeover = leases.claim(session, Run, run.id, owner="b", lease_seconds=60)
    assert takeover.won and takeover.attempts == 2
    assert not leases.renew(session, Run, run.id, lease=Lease("a", first.epoch), lease_seconds=60)  # a lost


def _taken_over(session, owner: str = "w") -> tuple[str, Lease, Lease]:
    """A run claimed by `owner`, frozen past its lease, then claimed again by the same owner
    name (a restarted process can reuse a pid): only the epoch tells the two claims apart."""
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    first = leases.claim(session, Run, run.id, owner=owner, lease_seconds=60)
    leases.renew(session, Run, run.id, lease=Lease(owner, first.epoch), lease_seconds=-1)
    second = leases.claim(session, Run, run.id, owner=owner, lease_seconds=60)
    assert first.won and second.won and second.epoch == first.epoch + 1
    return run.id, Lease(owner, first.epoch), Lease(owner, second.epoch)


def test_a_claim_takes_an_expired_lease_by_the_database_clock(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    first = leases.claim(session, Run, run.id, owner="a", lease_seconds=60)
    expires = session.scalar(select(Run.lease_expires_at).where(Run.id == run.id))
    db_now = session.scalar(select(leases.db_now()))
    assert 59 <= (as_utc(expires) - as_utc(db_now)).total_seconds() <= 61
    assert not leases.claim(session, Run, run.id, owner="b", lease_seconds=60).won
    leases.renew(session, Run, run.id, lease=Lease("a", first.epoch), lease_seconds=-1)
    assert leases.claim(session, Run, run.id, owner="b", lease_seconds=60).won


def test_a_stale_epoch_cannot_finish_the_run(session):
    run_id, stale, live = _taken_over(session)
    for status in ("succeeded", "failed"):
        assert not runs.set_status(session=session, run_id=run_id, status=status, expect=("running",), lease=stale)
    assert session.scalar(select(Run.status).where(Run.id == run_id)) == "running"
    assert runs.set_status(session=session, run_id=run_id, status="succeeded", expect=("running",), lease=live)
    # Once it ended, the live lease is spent too.
    assert not runs.set_status(session=session, run_id=run_id, status="failed", expect=("running",), lease=live)


def test_a_stale_epoch_cannot_write_checkpoints_progress_or_events(session):
    run_id, stale, live = _taken_over(session)
    with pytest.raises(LeaseLost):
        runs.save_checkpoint(session=session, run_id=run_id, step=9, data=b"x", is_final=True, keep=2, lease=stale)
    with pytest.raises(LeaseLost):
        runs.record_progress(session=session, run_id=run_id, step=3, metrics={"loss": 1.0}, lease=stale)
    with pytest.raises(LeaseLost):
        runs.add_event(session=session, run_id=run_id, type="resumed", lease=stale)
    with pytest.raises(LeaseLost):
        leases.fence(session, Run, run_id, Lease("intruder", live.epoch))
    session.flush()
    assert session.scalar(select(func.count()).select_from(Checkpoint)) == 0
    assert session.scalar(select(Run.step).where(Run.id == run_id)) == 0
    assert session.scalar(select(func.count()).where(RunEvent.run_id == run_id, RunEvent.type != "status")) == 0

    runs.save_checkpoint(session=session, run_id=run_id, step=9, data=b"x", is_final=False, keep=2, lease=live)
    runs.record_progress(session=session, run_id=run_id, step=9, metrics={"loss": 1.0}, lease=live)
    assert runs.metric_series(session=session, run_id=run_id) == {"loss": [[9, 1.0]]}


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


def _crash(session, run_id: str) -> None:
    """The holder stops renewing (a SIGKILL) and the reconciler takes the run back."""
    session.execute(update_lease_expired(run_id))
    assert leases.expired(session, Run) == [run_id]


def update_lease_expired(run_id: str):
    from sqlalchemy import update

    return update(Run).where(Run.id == run_id).values(lease_expires_at=leases.db_time(-1.0))


def test_attempts_count_claims_that_ended_without_progress(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    claim = lambda owner: runs.claim_run(session=session, run_id=run.id, owner=owner, lease_seconds=60)
    assert claim("a").attempts == 1
    _crash(session, run.id)  # a dies before its first checkpoint: that attempt is spent
    b = claim("b")
    assert b.attempts == 2
    runs.save_checkpoint(session=session, run_id=run.id, step=5, data=b"x", is_final=False, keep=3,
                         lease=Lease("b", b.epoch))
    _crash(session, run.id)  # b dies after a checkpoint: it made progress, so the next claim refunds it
    c = claim("c")
    assert c.attempts == 2
    # c is told to shut down (a deploy) before any progress: it gives the run back, refunded at once
    assert runs.give_back(session=session, run_id=run.id, lease=Lease("c", c.epoch), reason="shutdown")
    assert tuple(session.execute(select(Run.status, Run.attempts).where(Run.id == run.id)).one()) == ("queued", 1)
    d = claim("d")
    runs.save_checkpoint(session=session, run_id=run.id, step=9, data=b"x", is_final=False, keep=3,
                         lease=Lease("d", d.epoch))
    assert runs.give_back(session=session, run_id=run.id, lease=Lease("d", d.epoch), reason="database down")
    assert claim("e").attempts == 2  # d's give-back after progress is refunded once, by this claim
    events = session.scalars(select(RunEvent.data).where(RunEvent.run_id == run.id, RunEvent.type == "status")
                             .order_by(RunEvent.id))
    assert [e["resume_step"] for e in events if e and e.get("status") == "running"] == [0, 0, 5, 5, 9]


def test_a_run_given_back_while_cancelling_is_cancelled(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    a = runs.claim_run(session=session, run_id=run.id, owner="a", lease_seconds=60)
    runs.request_cancel(session=session, run=session.get(Run, run.id))
    assert runs.give_back(session=session, run_id=run.id, lease=Lease("a", a.epoch), reason="shutdown")
    assert runs.status_of(session=session, run_id=run.id) == "cancelled"
    assert not runs.give_back(session=session, run_id=run.id, lease=Lease("a", a.epoch), reason="again")


def test_database_errors_are_retried_then_reported_as_unavailable(monkeypatch):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from store.settings import get_settings
    from worker.retry import DatabaseUnavailable, retrying

    failures = iter([OperationalError("SELECT 1", {}, Exception("server closed the connection"))] * 2)

    def flaky() -> str:
        for exc in failures:
            raise exc
        return "written"

    assert retrying(flaky, "flaky write") == "written"
    monkeypatch.setattr(get_settings(), "db_retry_seconds", 1.0)
    nowhere = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(DatabaseUnavailable):
        retrying(lambda: nowhere.connect().close(), "write to a stopped server")


def test_active_sample_jobs_per_tenant_are_capped_with_the_figures(session):
    from service.errors import Problem
    from service.limits import check_sample_quota
    from store import samples
    from store.settings import Settings

    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    settings = Settings(max_active_samples=2)
    for _ in range(2):
        check_sample_quota(session, settings, "t")
        samples.create_sample_job(session=session, tenant="t", run_id=run.id, checkpoint_id=None, params={})
    with pytest.raises(Problem) as refused:
        check_sample_quota(session, settings, "t")
    assert refused.value.status == 429 and "2 sample jobs" in refused.value.detail and "quota is 2" in refused.value.detail
    check_sample_quota(session, settings, "another tenant")  # a quota per tenant
