"""Bounded storage at store level, on SQLite and PostgreSQL: lookups and listings never read a
blob (the SQL is watched on the engine), downloads come back in chunks byte for byte, retention
when a run ends, the bytes a tenant stores, and what the DELETEs remove."""

from __future__ import annotations

import os
import re

from sqlalchemy import event, func, select

from store import blobs, quotas, runs
from store import datasets as stored_datasets
from store import samples as stored_samples
from store import sweeps as stored_sweeps
from store.settings import get_settings
from store.tables import Checkpoint, Run, RunEvent, SampleJob

SPEC = {"train": {"steps": 10}, "dataset": "digits"}
BLOBS = ("checkpoints.data", "sample_jobs.images_npz", "sample_jobs.grid_png", "datasets.data")


def _run_with_blobs(session, tenant: str = "t", size: int = 3000) -> tuple[str, str, str, str]:
    """A run with a final checkpoint of `size` bytes and a preview, and an upload; their ids."""
    run, _ = runs.create_run(session=session, tenant=tenant, spec=SPEC)
    ckpt_id = runs.save_checkpoint(session=session, run_id=run.id, step=5, data=os.urandom(size), is_final=True,
                                   keep=3)
    stored_samples.add_preview(session=session, tenant=tenant, run_id=run.id, checkpoint_id=ckpt_id, params={},
                               images_npz=b"n" * 200, grid_png=b"g" * 50)
    dataset, _ = stored_datasets.create_dataset(session=session, tenant=tenant, name="d", sha256=tenant * 64,
                                                info={}, data=b"d" * 700)
    session.commit()
    return run.id, ckpt_id, runs.preview(session=session, run_id=run.id).id, dataset.id


class Statements:
    """The SQL the session's engine runs while the block is open."""

    def __init__(self, session):
        self.engine, self.seen = session.get_bind(), []

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append(statement)

    def __enter__(self) -> list[str]:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self.seen

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def blobs_read(statements: list[str]) -> set[str]:
    """The blob columns a statement selects; `length(<blob>)` reads no value and does not count."""
    read = set()
    for sql in statements:
        sql = re.sub(r"length\([^)]*\)", "length(...)", sql.lower())
        read |= {column for column in BLOBS if column in sql}
    return read


def test_lookups_listings_and_sizes_read_no_blob(session):
    run_id, ckpt_id, job_id, dataset_id = _run_with_blobs(session)
    session.expunge_all()  # nothing loaded before: every attribute below comes from the SQL watched
    with Statements(session) as seen:
        assert runs.get_checkpoint(session=session, tenant="t", checkpoint_id=ckpt_id).size == 3000
        assert [c.id for c in runs.list_checkpoints(session=session, run_id=run_id)] == [ckpt_id]
        assert runs.latest_checkpoint(session=session, run_id=run_id).id == ckpt_id
        assert runs.preview(session=session, run_id=run_id).id == job_id
        assert stored_samples.get_sample(session=session, tenant="t", sample_id=job_id).status == "succeeded"
        assert stored_datasets.get_dataset(session=session, tenant="t", dataset_id=dataset_id).name == "d"
        assert [d.id for d in stored_datasets.list_datasets(session=session, tenant="t")] == [dataset_id]
        assert blobs.sample_images_blob(session=session, sample_id=job_id).size == 200
        assert quotas.stored_bytes(session=session, tenant="t") == 3000 + 200 + 50 + 700
    assert seen and blobs_read(seen) == set()
    with Statements(session) as seen:  # the watch sees a blob when one is read
        assert len(runs.get_checkpoint(session=session, tenant="t", checkpoint_id=ckpt_id).data) == 3000
    assert blobs_read(seen) == {"checkpoints.data"}


def test_a_download_comes_back_in_chunks_byte_for_byte(session):
    _, ckpt_id, _, _ = _run_with_blobs(session, size=2500)
    data = session.scalar(select(Checkpoint.data).where(Checkpoint.id == ckpt_id))
    pieces = list(blobs.iter_chunks(session=session, column=Checkpoint.data, key=ckpt_id, size=2500, chunk=1000))
    assert [len(p) for p in pieces] == [1000, 1000, 500] and b"".join(pieces) == data
    with Statements(session) as seen:
        next(blobs.iter_chunks(session=session, column=Checkpoint.data, key=ckpt_id, size=2500, chunk=1000))
    assert "substr" in seen[-1].lower()  # the database slices: only the chunk crosses the wire
    gone = blobs.iter_chunks(session=session, column=Checkpoint.data, key=ckpt_id, size=2500, chunk=1000)
    assert len(next(gone)) == 1000
    session.execute(Checkpoint.__table__.delete().where(Checkpoint.id == ckpt_id))
    session.commit()
    assert list(gone) == []  # deleted mid-download: the stream ends (short of its Content-Length)


def _checkpoints(session, run_id: str) -> list[tuple[int, bool]]:
    return [(c.step, c.is_final) for c in runs.list_checkpoints(session=session, run_id=run_id)]


def test_a_run_that_ends_keeps_its_final_or_newest_checkpoint_and_those_a_sample_job_wants(session):
    failed, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    ids = [runs.save_checkpoint(session=session, run_id=failed.id, step=s, data=b"x", is_final=False, keep=10)
           for s in (1, 2, 3, 4)]
    stored_samples.create_sample_job(session=session, tenant="t", run_id=failed.id, checkpoint_id=ids[1], params={})
    runs.set_status(session=session, run_id=failed.id, status="running")
    assert _checkpoints(session, failed.id) == [(1, False), (2, False), (3, False), (4, False)]  # still running
    runs.set_status(session=session, run_id=failed.id, status="failed")
    assert _checkpoints(session, failed.id) == [(2, False), (4, False)]

    succeeded, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    for step in (1, 2):
        runs.save_checkpoint(session=session, run_id=succeeded.id, step=step, data=b"x", is_final=False, keep=10)
    runs.save_checkpoint(session=session, run_id=succeeded.id, step=3, data=b"x", is_final=True, keep=10)
    runs.set_status(session=session, run_id=succeeded.id, status="succeeded")
    assert _checkpoints(session, succeeded.id) == [(3, True)]


def test_intermediate_checkpoints_are_kept_when_the_setting_says_so(session, monkeypatch):
    monkeypatch.setenv("REGDIFF_KEEP_INTERMEDIATE_CHECKPOINTS", "true")
    get_settings.cache_clear()
    try:
        run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
        for step in (1, 2, 3):
            runs.save_checkpoint(session=session, run_id=run.id, step=step, data=b"x", is_final=step == 3, keep=10)
        runs.set_status(session=session, run_id=run.id, status="succeeded")
        assert _checkpoints(session, run.id) == [(1, False), (2, False), (3, True)]
    finally:
        get_settings.cache_clear()


def test_stored_bytes_are_the_tenants_own(session):
    _run_with_blobs(session, tenant="t", size=1000)
    _run_with_blobs(session, tenant="u", size=5000)
    assert quotas.stored_bytes(session=session, tenant="t") == 1000 + 250 + 700
    assert quotas.stored_bytes(session=session, tenant="u") == 5000 + 250 + 700
    assert quotas.stored_bytes(session=session, tenant="nobody") == 0


def test_a_dataset_is_in_use_while_a_run_on_it_is_unfinished(session):
    dataset, _ = stored_datasets.create_dataset(session=session, tenant="t", name="d", sha256="a" * 64, info={},
                                                data=b"d")
    on_it, _ = runs.create_run(session=session, tenant="t", spec={**SPEC, "dataset": f"upload:{dataset.id}"})
    runs.create_run(session=session, tenant="t", spec=SPEC)  # another dataset
    assert stored_datasets.active_runs_using(session=session, tenant="t", dataset_id=dataset.id) == [on_it.id]
    assert stored_datasets.active_runs_using(session=session, tenant="u", dataset_id=dataset.id) == []
    runs.set_status(session=session, run_id=on_it.id, status="cancelled")
    assert stored_datasets.active_runs_using(session=session, tenant="t", dataset_id=f"upload:{dataset.id}") == []


def test_deleting_a_sweep_removes_its_runs_and_everything_they_stored(session):
    sweep, _ = stored_sweeps.create_sweep(session=session, tenant="t", base=SPEC, vary={"lambda": [0, 1]},
                                          specs=[SPEC, SPEC])
    kept, _, _, _ = _run_with_blobs(session)
    members = [r.id for r in stored_sweeps.sweep_runs(session=session, sweep=sweep)]
    for run_id in members:
        runs.save_checkpoint(session=session, run_id=run_id, step=1, data=b"x", is_final=False, keep=3)
    session.commit()
    stored_sweeps.delete_sweep(session=session, sweep_id=sweep.id)
    session.commit()
    assert stored_sweeps.get_sweep(session=session, tenant="t", sweep_id=sweep.id) is None
    for table in (Run, RunEvent, Checkpoint, SampleJob):
        column = table.id if table is Run else table.run_id
        assert session.scalar(select(func.count()).where(column.in_(members))) == 0
    assert runs.get_run(session=session, tenant="t", run_id=kept) is not None
