"""worker/stacking.py against a real database (SQLite, PostgreSQL): a stack that cannot train gives
its points back to train alone, without spending an attempt, and keeps them out of stacks after."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import select

from store import db, runs, sweeps
from store.leases import Lease
from store.tables import Run, RunEvent
from tests.conftest import TINY_RUN
from tests.store.test_reconciler import _reset_caches, backend  # noqa: F401  (the fixture: a migrated database per backend)
from worker import stacking


@pytest.fixture(autouse=True)
def _settings_reset():
    """Set up before `backend` and its monkeypatch, so torn down after them: the settings cache is
    emptied once REGDIFF_SWEEP_BATCHING is unset again."""
    yield
    _reset_caches()


def _sweep_of_two() -> list[str]:
    specs = [{**TINY_RUN, "lambda": lam} for lam in (0.0, 1.0)]
    with db.session_scope() as session:
        sweep, _ = sweeps.create_sweep(session=session, tenant="t", base=TINY_RUN, vary={"lambda": [0.0, 1.0]},
                                       specs=specs)
        return [run.id for run in sweeps.sweep_runs(session=session, sweep=sweep)]


def _claim(run_id: str) -> Lease:
    with db.session_scope() as session:
        claim = runs.claim_run(session=session, run_id=run_id, owner="w", lease_seconds=60)
    assert claim.won
    return Lease("w", claim.epoch)


def _events(run_id: str, kind: str) -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(RunEvent.message).where(RunEvent.run_id == run_id, RunEvent.type == kind)))


def test_a_stack_that_breaks_gives_its_points_back_to_train_alone(backend, monkeypatch):  # noqa: F811
    monkeypatch.setenv("REGDIFF_SWEEP_BATCHING", "on")
    _reset_caches()
    ids = _sweep_of_two()

    def broken(points, data, *, device, on_outcome):  # what a stack missing a kernel on some device does
        raise RuntimeError("no batching rule for this op")

    monkeypatch.setattr(stacking, "train_stacked", broken)
    stacking.train_stacked_runs([(run_id, _claim(run_id)) for run_id in ids])
    with db.session_scope() as session:
        back = {run.id: (run.status, run.attempts) for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
    assert back == {run_id: ("queued", 0) for run_id in ids}, "given back, the attempt refunded"
    for run_id in ids:
        assert _events(run_id, "stacked") and _events(run_id, "stack_failed") == [
            "its stack failed (RuntimeError); it trains alone from its latest checkpoint"]

    _claim(ids[0])  # the next claim: no partners, and it says why
    assert stacking.claim_partners(ids[0], owner="w", device=torch.device("cpu")) == []
    assert _events(ids[0], "unstacked") == ["trained alone: its stack failed before, so it trains alone"]
    with db.session_scope() as session:
        assert session.get(Run, ids[1]).status == "queued", "not claimed as a partner either"
