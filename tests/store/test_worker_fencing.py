"""The worker's own writes against a real database (SQLite, PostgreSQL): what it writes at the end
of training, that every write of a run (the evaluation's included) is fenced by its lease, and that
lease expiry goes by the database's clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from sqlalchemy import func, select, update

from models.datasets import load_builtin
from models.spec import RunSpec
from models.trainer import train
from store import db, leases, runs, samples
from store.leases import Lease, LeaseLost
from store.tables import Run, RunEvent, SampleJob, utcnow
from tests.conftest import TINY_RUN
from tests.live import free_port
from tests.store.test_reconciler import _reset_caches, backend  # noqa: F401  (the fixture: a migrated database per backend)
from worker.celery_app import waiting_messages
from worker.evaluation import evaluate_final
from worker.jobs import _ProgressWriter, give_back
from worker.metrics import TrainingPace
from worker.retry import DatabaseUnavailable
from worker.samples import _give_back as give_back_sample


def _claimed(owner: str = "a") -> tuple[str, Lease]:
    with db.session_scope() as session:
        run, _ = runs.create_run(session=session, tenant="t", spec=TINY_RUN)
        claim = runs.claim_run(session=session, run_id=run.id, owner=owner, lease_seconds=60)
    return run.id, Lease(owner, claim.epoch)


def _metrics_events(run_id: str) -> list[dict]:
    with db.session_scope() as session:
        return list(session.scalars(select(RunEvent.data).where(RunEvent.run_id == run_id,
                                                                RunEvent.type == "metrics").order_by(RunEvent.id)))


def test_the_last_step_is_written_once_and_a_resume_at_it_keeps_the_metrics(backend):  # noqa: F811
    run_id, lease = _claimed()
    writer = _ProgressWriter(run_id, lease, 0.0, TrainingPace(8))
    writer(12, {"loss": 0.5})  # the log write of the last step (no throttle)
    writer.final(12, {"loss": 0.5})  # the end of training used to write it a second time
    assert _metrics_events(run_id) == [{"step": 12, "loss": 0.5}]

    # Given back at its last step, resumed there: the new claim trains no step, its metrics are {}.
    resumed = _ProgressWriter(run_id, lease, 0.0, TrainingPace(8))
    resumed.final(12, {})
    assert _metrics_events(run_id) == [{"step": 12, "loss": 0.5}]
    with db.session_scope() as session:
        assert session.get(Run, run_id).metrics == {"loss": 0.5}


def test_evaluation_events_of_a_stale_owner_are_refused(backend):  # noqa: F811
    run_id, stale = _claimed("a")
    with db.session_scope() as session:  # a froze past its lease; b took the run over
        session.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=leases.db_time(-1.0)))
        assert runs.claim_run(session=session, run_id=run_id, owner="b", lease_seconds=60).won
    spec = RunSpec.model_validate({**TINY_RUN, "evaluation": {"n_samples": 2, "steps": 1}})
    # a wakes up and evaluates (here it fails: no real state), then reports: refused either way.
    with pytest.raises(LeaseLost):
        evaluate_final(run_id, spec, b"not a checkpoint", None, device=torch.device("cpu"), lease=stale)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).where(RunEvent.run_id == run_id,
                                                         RunEvent.type == "evaluation")) == 0


def test_a_fast_worker_clock_does_not_cancel_a_run_still_being_stopped(backend, monkeypatch):  # noqa: F811
    run_id, _ = _claimed()
    with db.session_scope() as session:
        runs.request_cancel(session=session, run=session.get(Run, run_id))  # its worker stops it at the next step
    fast = utcnow() + timedelta(minutes=5)  # the reconciling worker's clock runs 5 min ahead
    monkeypatch.setattr(runs, "utcnow", lambda: fast)
    with db.session_scope() as session:
        assert runs.cancel_abandoned(session=session) == []
        session.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=leases.db_time(-1.0)))
        assert runs.cancel_abandoned(session=session) == [run_id]  # its worker did die


def test_a_give_back_after_the_lease_was_lost_sends_no_message(backend):  # noqa: F811
    run_id, stale = _claimed("a")
    with db.session_scope() as session:  # a froze past its lease; b took the run over
        session.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=leases.db_time(-1.0)))
        live = runs.claim_run(session=session, run_id=run_id, owner="b", lease_seconds=60)
    give_back(run_id, stale, "its worker was shutting down")  # a wakes into a warm shutdown
    with db.session_scope() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.lease_owner, run.lease_epoch) == ("running", "b", live.epoch)
    assert waiting_messages() == 0  # b holds the run: a wake-up would only be a message to drop


def _claimed_sample(owner: str = "a") -> tuple[str, Lease]:
    run_id, _ = _claimed()
    with db.session_scope() as session:
        job, _ = samples.create_sample_job(session=session, tenant="t", run_id=run_id, checkpoint_id=None,
                                           params={"n": 2})
        claim = leases.claim(session, SampleJob, job.id, owner=owner, lease_seconds=60)
    return job.id, Lease(owner, claim.epoch)


def test_a_sample_job_the_database_failed_goes_back_to_the_queue_without_spending_an_attempt(backend):  # noqa: F811
    job_id, lease = _claimed_sample()
    give_back_sample(job_id, lease)  # what run_sampling does on DatabaseUnavailable
    with db.session_scope() as session:
        job = session.get(SampleJob, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
    assert waiting_messages() == 1  # a wake-up for the next worker

    with db.session_scope() as session:  # the next worker claims it: its first attempt
        assert leases.claim(session, SampleJob, job_id, owner="b", lease_seconds=60).attempts == 1
    give_back_sample(job_id, lease)  # the old lease gives back nothing and sends nothing
    with db.session_scope() as session:
        assert (session.get(SampleJob, job_id).status, session.get(SampleJob, job_id).lease_owner) == ("running", "b")
    assert waiting_messages() == 1


def test_an_unreachable_database_during_the_evaluation_gives_the_run_back_instead_of_an_error(tmp_path, monkeypatch):
    """The classifier cache lives in the database: when it cannot be reached (here: nothing listens
    on the port), the evaluation must not report `{"error": ...}` on a model that is fine; the
    worker gives the run back (training.py catches DatabaseUnavailable)."""
    spec = RunSpec.model_validate({**TINY_RUN, "train": {"steps": 2, "batch_size": 4}, "checkpoint_every": None,
                                   "evaluation": {"n_samples": 4, "steps": 1}})
    data = load_builtin("digits")
    state = train(spec, data, device="cpu").state
    monkeypatch.setenv("REGDIFF_HOME", str(tmp_path))
    monkeypatch.setenv("REGDIFF_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
    monkeypatch.setenv("REGDIFF_DB_RETRY_SECONDS", "1")
    _reset_caches()
    try:
        with pytest.raises(DatabaseUnavailable):
            evaluate_final("run_x", spec, state, data, device=torch.device("cpu"), lease=Lease("a", 1))
    finally:
        monkeypatch.undo()
        _reset_caches()
