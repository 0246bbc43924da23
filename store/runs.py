"""Keyword-only store functions for runs, their events, metrics and checkpoints."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from store import leases, webhooks
from store.leases import Lease, fence, held_by
from store.pagination import keyset_page
from store.settings import get_settings
from store.tables import Checkpoint, Run, RunEvent, SampleJob, utcnow

ACTIVE = ("queued", "running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another request body."""


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def create_run(
    *,
    session: Session,
    tenant: str,
    spec: dict[str, Any],
    idempotency_key: str | None = None,
    sweep_id: str | None = None,
    metadata: dict[str, str] | None = None,
    request_extras: dict[str, Any] | None = None,
) -> tuple[Run, bool]:
    """Insert a queued run; returns (run, created). A repeated key returns the original run.

    `request_extras`: what else the request carried (metadata, a webhook), compared with the
    first request's like the spec is."""
    digest = spec_hash({**spec, **request_extras} if request_extras else spec)
    if idempotency_key is not None:
        existing = _by_key(session, tenant, idempotency_key)
        if existing is not None:
            return _same_request(existing, digest), False
    run = Run(
        tenant=tenant,
        spec=spec,
        total_steps=spec["train"]["steps"],
        sweep_id=sweep_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
        enqueued_at=utcnow(),
        meta=metadata or None,
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = _by_key(session, tenant, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, digest), False
    session.add(RunEvent(run_id=run.id, type="status", message="queued"))
    return run, True


def _by_key(session: Session, tenant: str, key: str | None) -> Run | None:
    return session.scalar(select(Run).where(Run.tenant == tenant, Run.idempotency_key == key))


def _same_request(run: Run, digest: str) -> Run:
    if run.request_hash != digest:
        raise IdempotencyConflict(run.id)
    return run


def get_run(*, session: Session, tenant: str, run_id: str) -> Run | None:
    return session.scalar(select(Run).where(Run.id == run_id, Run.tenant == tenant))


def load_run(*, session: Session, run_id: str) -> Run | None:
    """Any tenant's run, by id: for the worker, which got the id from a message the api sent."""
    return session.get(Run, run_id)


def status_of(*, session: Session, run_id: str) -> str | None:
    return session.scalar(select(Run.status).where(Run.id == run_id))


def cancel_requested(*, session: Session, run_id: str) -> bool:
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def list_runs(
    *,
    session: Session,
    tenant: str,
    limit: int,
    after: str | None = None,
    status: str | None = None,
    sweep_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[list[Run], bool]:
    """Newest first; `after` is the id of the last run of the previous page (UnknownCursor if none).
    `metadata`: only runs with every one of these pairs."""
    query = select(Run).where(Run.tenant == tenant)
    if status:
        query = query.where(Run.status == status)
    if sweep_id:
        query = query.where(Run.sweep_id == sweep_id)
    query = query.where(*has_metadata(Run.meta, metadata))
    return keyset_page(session, query, Run, tenant=tenant, limit=limit, after=after)


def sweep_siblings(*, session: Session, run: Run) -> list[Run]:
    """The other runs of `run`'s sweep, oldest first ([] for a run outside a sweep)."""
    if run.sweep_id is None:
        return []
    query = select(Run).where(Run.sweep_id == run.sweep_id, Run.id != run.id)
    return list(session.scalars(query.order_by(Run.created_at, Run.id)))


def has_metadata(column: Any, metadata: dict[str, str] | None) -> list[Any]:
    """WHERE clauses: the JSON `column` (a run's or a sweep's metadata) holds every pair."""
    return [column[key].as_string() == value for key, value in (metadata or {}).items()]


def add_event(
    *, session: Session, run_id: str, type: str, message: str = "", level: str = "info", data: Any = None,
    lease: Lease | None = None,
) -> None:
    """With `lease` (a worker's write), raises LeaseLost unless that lease still holds the run."""
    if lease is not None:
        fence(session, Run, run_id, lease)
    session.add(RunEvent(run_id=run_id, type=type, level=level, message=message, data=data))


def has_event(*, session: Session, run_id: str, type: str) -> bool:
    return session.scalar(select(RunEvent.id).where(RunEvent.run_id == run_id, RunEvent.type == type).limit(1)) is not None


def list_events(*, session: Session, run_id: str, after: int = 0, limit: int = 100) -> tuple[list[RunEvent], bool]:
    rows = list(
        session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.id > after)
            .order_by(RunEvent.id)
            .limit(limit + 1)
        )
    )
    return rows[:limit], len(rows) > limit


def metric_series(*, session: Session, run_id: str) -> dict[str, list[list[float]]]:
    """{"loss": [[step, value], ...], ...} from the metrics events."""
    series: dict[str, list[list[float]]] = {}
    for data in session.scalars(
        select(RunEvent.data).where(RunEvent.run_id == run_id, RunEvent.type == "metrics").order_by(RunEvent.id)
    ):
        step = data["step"]
        for name, value in data.items():
            if name != "step":
                series.setdefault(name, []).append([step, value])
    return series


def record_progress(
    *, session: Session, run_id: str, step: int, metrics: dict[str, float], lease: Lease | None = None
) -> None:
    """The run's step and metrics. With `lease` (a worker's write), raises LeaseLost unless
    that lease still holds the run."""
    if lease is not None:
        fence(session, Run, run_id, lease)
    session.execute(update(Run).where(Run.id == run_id).values(step=step, metrics=metrics))
    add_event(session=session, run_id=run_id, type="metrics", data={"step": step, **metrics})


def set_status(
    *,
    session: Session,
    run_id: str,
    status: str,
    message: str = "",
    level: str = "info",
    expect: tuple[str, ...] = (),
    lease: Lease | None = None,
    event_data: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Change status and log it; terminal statuses stamp finished_at and drop the lease.

    With `expect`, only from one of those statuses (a compare-and-set: a cancel and a claim
    racing cannot both win); with `lease` (a worker's write), only while that lease holds the
    run; `event_data` goes into the status event besides the status; returns whether the row changed."""
    if status in TERMINAL:
        values.update(finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
    if status == "running":
        values.setdefault("started_at", func.coalesce(Run.started_at, utcnow()))
    query = update(Run).where(Run.id == run_id)
    if expect:
        query = query.where(Run.status.in_(expect))
    if lease is not None:
        query = query.where(held_by(Run, lease))
    if session.execute(query.values(status=status, **values)).rowcount == 0:
        return False
    if status in TERMINAL and not get_settings().keep_intermediate_checkpoints:
        drop_intermediate_checkpoints(session=session, run_id=run_id)
    add_event(session=session, run_id=run_id, type="status", level=level, message=message or status,
              data={"status": status, **(event_data or {})})
    if status in TERMINAL:
        webhooks.run_changed(session=session, run_id=run_id, status=status)
    return True


def claim_run(*, session: Session, run_id: str, owner: str, lease_seconds: float) -> leases.Claim:
    """Claim the run (store/leases.py) and count the attempt; the "running" status event
    records where this claim resumes from (`resume_step`).

    Attempts count crashes, not infrastructure: every claim spends one, and the claim after
    it refunds that one when the previous claim got past the checkpoint it resumed from (it
    made progress, so whatever ended it was not the run's fault). A worker that gives a run
    back (warm shutdown, database unreachable) refunds its own claim in `give_back`."""
    progressed = _progressed_since_claim(session, run_id)
    first = session.scalar(select(Run.started_at).where(Run.id == run_id)) is None
    claim = leases.claim(session, Run, run_id, owner=owner, lease_seconds=lease_seconds)
    if not claim.won:
        return claim
    attempts = claim.attempts
    if progressed:
        attempts -= 1
        session.execute(update(Run).where(Run.id == run_id).values(attempts=attempts))
    set_status(session=session, run_id=run_id, status="running", message=f"attempt {attempts} on {owner}",
               event_data={"attempt": attempts, "resume_step": checkpoint_step(session, run_id)})
    if first:  # run.running once per run: a resumed or retried run is not news to a webhook
        webhooks.run_changed(session=session, run_id=run_id, status="running")
    return leases.Claim(True, attempts, claim.epoch)


def give_back(*, session: Session, run_id: str, lease: Lease, reason: str) -> bool:
    """The worker hands its run back to the queue (the caller enqueues it) without spending
    an attempt: a warm shutdown or a database it could not reach is not the run's fault. A run
    being cancelled is cancelled instead. False when `lease` no longer holds the run."""
    if status_of(session=session, run_id=run_id) == "cancelling":
        return set_status(session=session, run_id=run_id, status="cancelled", expect=("cancelling",), lease=lease,
                          message=f"cancelled ({reason})")
    # A claim that progressed is refunded by the next claim (claim_run); refund the others here.
    refund = 0 if _progressed_since_claim(session, run_id) else 1
    if not leases.release(session, Run, run_id, lease=lease, status="queued", enqueued_at=utcnow(),
                          attempts=Run.attempts - refund):
        return False
    add_event(session=session, run_id=run_id, type="status", message=f"back in the queue: {reason}",
              data={"status": "queued"})
    return True


def checkpoint_step(session: Session, run_id: str) -> int:
    """The step of the run's newest checkpoint (where a claim resumes), 0 without one."""
    step = session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.run_id == run_id))
    return step or 0


def _progressed_since_claim(session: Session, run_id: str) -> bool:
    """Whether the run's newest checkpoint is past the one its last claim resumed from."""
    claims = select(RunEvent.data).where(RunEvent.run_id == run_id, RunEvent.type == "status")
    for data in session.scalars(claims.order_by(RunEvent.id.desc())):
        if data and data.get("status") == "running" and "resume_step" in data:
            return checkpoint_step(session, run_id) > data["resume_step"]
    return False


def request_cancel(*, session: Session, run: Run) -> None:
    """Queued: cancelled at once. Running: `cancelling` until the worker stops at its next check."""
    if not set_status(session=session, run_id=run.id, status="cancelled", expect=("queued",),
                      message="cancelled before it started"):
        set_status(session=session, run_id=run.id, status="cancelling", expect=("running",), cancel_requested=True)


def ever_requeued(*, session: Session, run_ids: list[str]) -> set[str]:
    """Those of `run_ids` that already have a "requeued" event."""
    if not run_ids:
        return set()
    return set(session.scalars(select(RunEvent.run_id).where(RunEvent.run_id.in_(run_ids),
                                                            RunEvent.type == "requeued")))


def cancel_abandoned(*, session: Session) -> list[str]:
    """A run being cancelled whose worker died is cancelled: nobody will train it again. Expiry by
    the database's clock, as every lease (store/leases.py): a worker's fast clock must not cancel a
    run whose worker is still stopping it (and writing its last checkpoint)."""
    ids = list(session.scalars(select(Run.id).where(Run.status == "cancelling",
                                                    Run.lease_expires_at < leases.db_now())))
    for run_id in ids:
        set_status(session=session, run_id=run_id, status="cancelled", expect=("cancelling",),
                   message="cancelled (worker lost)")
    return ids


def save_checkpoint(
    *, session: Session, run_id: str, step: int, data: bytes, is_final: bool, keep: int, lease: Lease | None = None
) -> str:
    """Store a checkpoint; keep the newest `keep` non-final ones (retention). With `lease`
    (a worker's write), raises LeaseLost unless that lease still holds the run."""
    if lease is not None:
        fence(session, Run, run_id, lease)
    ckpt = Checkpoint(run_id=run_id, step=step, data=data, size=len(data), is_final=is_final)
    session.add(ckpt)
    session.flush()
    old = select(Checkpoint.id).where(Checkpoint.run_id == run_id, Checkpoint.is_final.is_(False))
    doomed = list(session.scalars(old.order_by(Checkpoint.step.desc()).offset(keep)))
    if doomed:
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_(doomed)))
    return ckpt.id


def drop_intermediate_checkpoints(*, session: Session, run_id: str) -> None:
    """Retention when a run ends (set_status to a terminal status, unless
    REGDIFF_KEEP_INTERMEDIATE_CHECKPOINTS): keep the final checkpoint, the newest one (a failed or
    cancelled run's resume point, what sampling and init_from use) and any an unfinished sample job
    asked for; delete the others. Reads no bytes."""
    rows = session.execute(select(Checkpoint.id, Checkpoint.step, Checkpoint.is_final)
                           .where(Checkpoint.run_id == run_id)).all()
    if not rows:
        return
    wanted = select(SampleJob.checkpoint_id).where(SampleJob.run_id == run_id,
                                                   SampleJob.status.in_(("queued", "running")))
    keep = {max(rows, key=lambda row: (row.step, row.is_final)).id, *session.scalars(wanted)}
    doomed = [row.id for row in rows if not row.is_final and row.id not in keep]
    if doomed:
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_(doomed)))


def latest_checkpoint(*, session: Session, run_id: str) -> Checkpoint | None:
    """The bytes are deferred: an existence check loads none, `.data` loads them (session open)."""
    return session.scalar(
        select(Checkpoint).options(defer(Checkpoint.data)).where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.step.desc()).limit(1)
    )


def list_checkpoints(*, session: Session, run_id: str) -> list[Checkpoint]:
    """Metadata only: the bytes are deferred until a download asks for them."""
    return list(
        session.scalars(
            select(Checkpoint).options(defer(Checkpoint.data)).where(Checkpoint.run_id == run_id)
            .order_by(Checkpoint.step)
        )
    )


def get_checkpoint(*, session: Session, tenant: str, checkpoint_id: str) -> Checkpoint | None:
    """The bytes are deferred: an existence check loads none, `.data` loads them (session open)."""
    return session.scalar(
        select(Checkpoint).options(defer(Checkpoint.data)).join(Run, Run.id == Checkpoint.run_id)
        .where(Checkpoint.id == checkpoint_id, Run.tenant == tenant)
    )


def preview(*, session: Session, run_id: str) -> SampleJob | None:
    """The run's latest end-of-run sample grid (a sample job of kind "preview"); its images are
    deferred (`.grid_png` loads the grid, session open)."""
    return session.scalar(
        select(SampleJob).options(defer(SampleJob.images_npz), defer(SampleJob.grid_png))
        .where(SampleJob.run_id == run_id, SampleJob.kind == "preview")
        .order_by(SampleJob.created_at.desc()).limit(1)
    )
