"""Webhooks in the database: endpoints, the outbox of events, and the deliveries the workers make.

An event is written by `emit`, in the caller's transaction: the status change that causes it
and its outbox rows commit together or not at all, so no event is lost to a crash between the
two and none is sent for a change that rolled back. `emit` writes one event and one `pending`
delivery per endpoint that listens (nothing when none does); the workers (worker/webhooks.py)
claim due deliveries, POST them and record the outcome here. Events of a run or a sweep have an
id derived from (subject, type), so a change seen twice (a run claimed again after a crash)
cannot make a second event.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.leases import db_now, db_time
from store.pagination import keyset_page
from store.tables import Run, SampleJob, Sweep, WebhookDelivery, WebhookEndpoint, WebhookEvent, new_id

EVENTS = ("run.running", "run.succeeded", "run.failed", "run.cancelled", "sweep.finished", "samples.succeeded")
RUN_EVENTS = ("run.running", "run.succeeded", "run.failed", "run.cancelled")


# ---- endpoints ----------------------------------------------------------------------------------


def create_endpoint(*, session: Session, tenant: str, url: str, events: list[str], secret: str,
                    description: str | None = None, run_id: str | None = None) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(tenant=tenant, url=url, events=events, secret=secret, description=description,
                               run_id=run_id)
    session.add(endpoint)
    session.flush()
    return endpoint


def count_endpoints(*, session: Session, tenant: str) -> int:
    """The tenant's own endpoints; a run's `webhook` is bounded by its run and not counted."""
    return session.scalar(select(func.count()).select_from(WebhookEndpoint).where(
        WebhookEndpoint.tenant == tenant, WebhookEndpoint.run_id.is_(None))) or 0


def get_endpoint(*, session: Session, tenant: str, endpoint_id: str) -> WebhookEndpoint | None:
    """Another tenant's endpoint is None, like a missing one."""
    return session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                        WebhookEndpoint.tenant == tenant))


def list_endpoints(*, session: Session, tenant: str, limit: int,
                   after: str | None = None) -> tuple[list[WebhookEndpoint], bool]:
    """Newest first, keyset pages (store/pagination.py)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant == tenant)
    return keyset_page(session, query, WebhookEndpoint, tenant=tenant, limit=limit, after=after)


def list_deliveries(*, session: Session, tenant: str, endpoint_id: str, limit: int,
                    after: str | None = None) -> tuple[list[WebhookDelivery], bool]:
    """The endpoint's delivery log, newest first, each with its event."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant == tenant,
                                          WebhookDelivery.endpoint_id == endpoint_id)
    return keyset_page(session, query, WebhookDelivery, tenant=tenant, limit=limit, after=after)


# ---- the outbox ---------------------------------------------------------------------------------


def subject_event_id(subject: str, type: str) -> str:
    """The one id an event of `type` about `subject` (a run, a sweep) can have."""
    return "evt_" + hashlib.sha256(f"{subject}\0{type}".encode()).hexdigest()[:28]


def _listeners(session: Session, tenant: str, type: str, run_id: str | None) -> list[str]:
    """Ids of the tenant's endpoints that want `type`: its tenant-wide ones and the run's own."""
    query = select(WebhookEndpoint.id, WebhookEndpoint.events).where(WebhookEndpoint.tenant == tenant)
    scope = WebhookEndpoint.run_id.is_(None)
    query = query.where(or_(scope, WebhookEndpoint.run_id == run_id) if run_id else scope)
    return [endpoint_id for endpoint_id, events in session.execute(query) if type in events]


def emit(*, session: Session, tenant: str, type: str, data: dict[str, Any], run_id: str | None = None,
         event_id: str | None = None) -> str | None:
    """Write the event and a pending delivery per listening endpoint, in the caller's transaction.

    `run_id`: the run the event is about (its own endpoint hears it too). `event_id`: a fixed id
    (subject_event_id); an event with that id already written is not written again. Returns the
    event's id, or None when nobody listens or it was written before."""
    endpoints = _listeners(session, tenant, type, run_id)
    if not endpoints or (event_id is not None and session.get(WebhookEvent, event_id) is not None):
        return None
    event = WebhookEvent(id=event_id or new_id("evt"), tenant=tenant, type=type, payload={"type": type, "data": data})
    try:
        with session.begin_nested():  # a concurrent writer of the same fixed id won: it is written once
            session.add(event)
    except IntegrityError:
        return None
    session.add_all([WebhookDelivery(tenant=tenant, endpoint_id=endpoint_id, event_id=event.id,
                                     next_attempt_at=db_now()) for endpoint_id in endpoints])
    return event.id


def _run_data(session: Session, run_id: str) -> tuple[str, str | None, dict[str, Any]] | None:
    """(tenant, sweep id, the run as an event carries it), read fresh (the row just changed)."""
    row = session.execute(select(Run.tenant, Run.sweep_id, Run.status, Run.meta, Run.step, Run.total_steps,
                                 Run.error).where(Run.id == run_id)).first()
    if row is None:
        return None
    tenant, sweep_id, status, meta, step, total_steps, error = row
    return tenant, sweep_id, {"id": run_id, "object": "run", "status": status, "sweep_id": sweep_id,
                              "metadata": meta or {}, "step": step, "total_steps": total_steps, "error": error,
                              "url": f"/v1/runs/{run_id}"}


def run_changed(*, session: Session, run_id: str, status: str) -> None:
    """The run reached `status` (running at its first claim, or a terminal one): its event, and
    the sweep's when this was the sweep's last unfinished run."""
    found = _run_data(session, run_id)
    if found is None:
        return
    tenant, sweep_id, data = found
    type = f"run.{status}"
    emit(session=session, tenant=tenant, type=type, data=data, run_id=run_id,
         event_id=subject_event_id(run_id, type))
    if sweep_id is not None and status != "running":
        _sweep_finished(session, tenant, sweep_id)


def _sweep_finished(session: Session, tenant: str, sweep_id: str) -> None:
    """sweep.finished once no run of the sweep is active.

    The sweep's row lock (PostgreSQL; SQLite has one writer at a time) makes the runs of a sweep
    that finish together look in turn, each seeing the others' committed statuses, so exactly one
    sees that it was the last. It is taken after the run's own row: whoever finishes runs takes
    a run, then its sweep, and a cancel of several runs commits each (service/sweeps.py), so two
    writers never wait for each other."""
    from store import sweeps  # store.sweeps imports store.runs, which imports this module

    if not _listeners(session, tenant, "sweep.finished", None):
        return
    session.execute(select(Sweep.id).where(Sweep.id == sweep_id).with_for_update())
    statuses = list(session.scalars(select(Run.status).where(Run.sweep_id == sweep_id)))
    status = sweeps.derive_status(statuses)
    if status in ("queued", "running"):
        return
    counts: dict[str, int] = {}
    for run_status in statuses:
        counts[run_status] = counts.get(run_status, 0) + 1
    meta = session.scalar(select(Sweep.meta).where(Sweep.id == sweep_id))
    data = {"id": sweep_id, "object": "sweep", "status": status, "metadata": meta or {}, "counts": counts,
            "url": f"/v1/sweeps/{sweep_id}"}
    emit(session=session, tenant=tenant, type="sweep.finished", data=data,
         event_id=subject_event_id(sweep_id, "sweep.finished"))


def sample_succeeded(*, session: Session, sample_id: str) -> None:
    row = session.execute(select(SampleJob.tenant, SampleJob.run_id, SampleJob.checkpoint_id)
                          .where(SampleJob.id == sample_id)).first()
    if row is None:
        return
    tenant, run_id, checkpoint_id = row
    data = {"id": sample_id, "object": "sample", "status": "succeeded", "run_id": run_id,
            "checkpoint_id": checkpoint_id, "url": f"/v1/samples/{sample_id}"}
    emit(session=session, tenant=tenant, type="samples.succeeded", data=data, run_id=run_id,
         event_id=subject_event_id(sample_id, "samples.succeeded"))


# ---- delivery (the workers) ---------------------------------------------------------------------


def _due() -> ColumnElement[bool]:
    return and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= db_now())


def due_deliveries(*, session: Session, limit: int) -> list[str]:
    """Ids of pending deliveries whose time has come, oldest first."""
    query = select(WebhookDelivery.id).where(_due()).order_by(WebhookDelivery.next_attempt_at).limit(limit)
    return list(session.scalars(query))


def claim_delivery(*, session: Session, delivery_id: str, hold_seconds: float) -> bool:
    """Count a try and hide the delivery from other workers for `hold_seconds` (longer than a
    try may take): one UPDATE, so two workers cannot both claim it. A worker that dies holding
    it leaves it pending, due again once the hold is over: at least once."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, _due())
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=db_time(float(hold_seconds)))
    )
    return result.rowcount == 1


def delivery_target(*, session: Session, delivery_id: str) -> tuple[WebhookDelivery, WebhookEndpoint] | None:
    """(the delivery with its event, its endpoint); None once the endpoint was deleted."""
    row = session.execute(select(WebhookDelivery, WebhookEndpoint)
                          .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                          .where(WebhookDelivery.id == delivery_id)).first()
    return (row[0], row[1]) if row is not None else None


def record_attempt(*, session: Session, delivery_id: str, succeeded: bool, response_code: int | None,
                   error: str | None, retry_in: float | None) -> None:
    """The try's outcome: succeeded; or pending again in `retry_in` seconds; or failed (None)."""
    values: dict[str, Any] = {"last_response_code": response_code, "last_error": (error or None) and error[:500]}
    if succeeded:
        values.update(status="succeeded", next_attempt_at=None, finished_at=db_now())
    elif retry_in is None:
        values.update(status="failed", next_attempt_at=None, finished_at=db_now())
    else:
        values.update(next_attempt_at=db_time(float(retry_in)))
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
