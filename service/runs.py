"""Runs: submit a RunSpec (checked against this server and database, stored, then queued),
list, cancel and delete them. The database is the truth; the broker message only wakes a worker,
and a lost one is re-sent by the reconciler (worker/reconciler.py)."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from models.spec import RunSpec
from service import limits, webhooks
from service import metadata as labels
from service.datasets import check_run_dataset
from service.errors import Problem
from service.lookup import found, page
from store import runs
from store.settings import Settings
from store.tables import Checkpoint, Run, WebhookEndpoint
from worker.celery_app import enqueue_train

log = logging.getLogger(__name__)


def check_against_server(session: Session, settings: Settings, tenant: str, spec: RunSpec) -> None:
    """What the spec alone cannot see: its dataset here, this server's limits, init_from's checkpoint."""
    check_run_dataset(session, settings, tenant, spec.dataset, spec.model.preset)
    limits.check_spec(session, settings, tenant, spec)


def idempotency_reused(what: str) -> Problem:
    return Problem(422, "Idempotency-Key reused", f"this Idempotency-Key was used for {what} with another"
                   " request body", errors=[{"field": "Idempotency-Key", "message": "reused with another body"}],
                   code="idempotency-key-reused")


def enqueue_all(run_ids: list[str]) -> None:
    """Wake a worker per run, after the commit; a run whose message cannot be sent stays stored
    and queued, and the reconciler enqueues it once the broker is back."""
    for run_id in run_ids:
        try:
            enqueue_train(run_id)
        except Exception:
            log.exception("could not enqueue run %s; the reconciler will retry", run_id)


class Submitted(NamedTuple):
    run: Run
    created: bool
    webhook: WebhookEndpoint | None  # the run's own endpoint, made by this request (its secret shown once)


def submit(session: Session, settings: Settings, tenant: str, spec: RunSpec, *,
           idempotency_key: str | None = None, metadata: dict[str, str] | None = None,
           webhook: dict[str, Any] | None = None) -> Submitted:
    """Validate against the database, store the run (with its own webhook endpoint when `webhook`
    {url, events} is given), then wake a worker.

    A repeated Idempotency-Key with the same body returns the first run (created False, and no
    webhook: its secret was shown once)."""
    pairs = labels.check(metadata)
    events = webhooks.check_run_webhook(settings, webhook["url"], webhook.get("events")) if webhook else None
    check_against_server(session, settings, tenant, spec)
    limits.check_run_quota(session, settings, tenant, idempotency_key=idempotency_key)
    extras: dict[str, Any] = {}  # part of the Idempotency-Key's check of the body, like the spec
    if pairs:
        extras["metadata"] = pairs
    if webhook:
        extras["webhook"] = {"url": webhook["url"], "events": events}
    try:
        run, created = runs.create_run(session=session, tenant=tenant, spec=spec.to_json(),
                                       idempotency_key=idempotency_key, metadata=pairs, request_extras=extras)
    except runs.IdempotencyConflict as exc:
        raise idempotency_reused(f"run {exc}") from None
    endpoint = None
    if created and webhook:
        endpoint = webhooks.add_run_webhook(session, tenant, run.id, url=webhook["url"], events=events)
    session.commit()
    if created:
        enqueue_all([run.id])
    return Submitted(run, created, endpoint)


def list_runs(session: Session, tenant: str, *, limit: int, after: str | None, status: str | None,
              sweep_id: str | None, metadata: dict[str, str] | None = None) -> tuple[list[Run], bool]:
    return page(runs.list_runs, session=session, tenant=tenant, limit=limit, after=after, status=status,
                sweep_id=sweep_id, metadata=labels.check_filter(metadata or {}))


def update(session: Session, run: Run, *, metadata: dict[str, str | None] | None) -> Run:
    """PATCH: the metadata merged as a JSON merge patch (null removes a key); nothing else of a
    run is the caller's to change once it is submitted."""
    if metadata is not None:
        run.meta = labels.merge(run.meta, metadata) or None
        session.commit()
    return run


def get_run(session: Session, tenant: str, run_id: str) -> Run:
    """The run if this tenant owns it; another tenant's run answers 404, exactly like a missing one."""
    return found(runs.get_run(session=session, tenant=tenant, run_id=run_id), "run", run_id)


def cancel(session: Session, run: Run) -> Run:
    """Idempotent: a run already cancelling or cancelled is answered as it is (a client's retry
    after a timeout must not raise); a run that succeeded or failed is a 409."""
    if run.status in ("cancelling", "cancelled"):
        return run
    if run.status in runs.TERMINAL:
        raise Problem(409, "Conflict", f"run {run.id} is already {run.status}")
    runs.request_cancel(session=session, run=run)
    session.commit()
    session.refresh(run)
    return run


def delete(session: Session, run: Run) -> None:
    """Removes the run with its events, checkpoints and samples; a worker on it stops at its next beat."""
    session.delete(run)
    session.commit()


def latest_checkpoint(session: Session, run: Run) -> Checkpoint:
    """The run's newest checkpoint; 409 while it has none."""
    ckpt = runs.latest_checkpoint(session=session, run_id=run.id)
    if ckpt is None:
        raise Problem(409, "Conflict", f"run {run.id} has no checkpoint yet (status {run.status})")
    return ckpt
