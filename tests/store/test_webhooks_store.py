"""The webhook outbox against real databases (SQLite and PostgreSQL built by the migration): an
event is written in the transaction of the change that causes it, once per subject, only for
endpoints that listen; deliveries are claimed by one worker at a time."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from store import leases, runs, sweeps, webhooks
from store.leases import Lease
from store.tables import WebhookDelivery, WebhookEvent

SPEC = {"train": {"steps": 10}}


def _endpoint(session, tenant="t", events=webhooks.EVENTS, run_id=None):
    return webhooks.create_endpoint(session=session, tenant=tenant, url="http://127.0.0.1:9/", events=list(events),
                                    secret="whsec_AAAA", run_id=run_id).id


def _events(session, type=None):
    query = select(WebhookEvent.type)
    return sorted(session.scalars(query if type is None else query.where(WebhookEvent.type == type)))


def _deliveries(session, endpoint_id):
    return sorted(session.scalars(select(WebhookEvent.type).join(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id)))


def _claim(session, run_id, owner):
    claim = runs.claim_run(session=session, run_id=run_id, owner=owner, lease_seconds=60)
    assert claim.won
    return Lease(owner, claim.epoch)


def test_run_running_fires_at_the_first_claim_only_and_each_endpoint_gets_what_it_asked_for(session):
    everything = _endpoint(session)
    finished_only = _endpoint(session, events=["run.succeeded"])
    other_tenant = _endpoint(session, tenant="u")
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    other_run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    other_runs_own = _endpoint(session, run_id=other_run.id)
    session.commit()

    lease = _claim(session, run.id, "a")
    assert runs.give_back(session=session, run_id=run.id, lease=lease, reason="shutdown")  # a resume follows
    lease = _claim(session, run.id, "b")
    assert runs.set_status(session=session, run_id=run.id, status="succeeded", expect=("running",), lease=lease)
    session.commit()

    assert _events(session) == ["run.running", "run.succeeded"]  # one running for two claims
    assert _deliveries(session, everything) == ["run.running", "run.succeeded"]
    assert _deliveries(session, finished_only) == ["run.succeeded"]
    assert _deliveries(session, other_tenant) == [] and _deliveries(session, other_runs_own) == []
    payload = session.scalar(select(WebhookEvent.payload).where(WebhookEvent.type == "run.succeeded"))
    assert payload["data"]["id"] == run.id and payload["data"]["status"] == "succeeded"


def test_a_resumed_run_is_not_announced_as_running_to_an_endpoint_made_meanwhile(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    session.commit()
    lease = _claim(session, run.id, "a")  # nobody listens at its start
    assert runs.give_back(session=session, run_id=run.id, lease=lease, reason="shutdown")
    late = _endpoint(session, events=["run.running", "run.succeeded"])
    lease = _claim(session, run.id, "b")  # the resume
    runs.set_status(session=session, run_id=run.id, status="succeeded", expect=("running",), lease=lease)
    session.commit()
    assert _deliveries(session, late) == ["run.succeeded"]


def test_a_status_change_that_rolls_back_leaves_no_event_and_nobody_listening_writes_none(session):
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    session.commit()
    runs.request_cancel(session=session, run=run)  # queued -> cancelled, nobody listens yet
    session.commit()
    assert _events(session) == []

    _endpoint(session)
    second, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    session.commit()
    runs.request_cancel(session=session, run=second)
    session.rollback()  # the cancel did not happen: neither did its event
    assert _events(session) == []
    runs.request_cancel(session=session, run=second)
    session.commit()
    assert _events(session) == ["run.cancelled"]


def test_sweep_finished_is_written_once_by_the_last_run_to_end(session):
    _endpoint(session, events=["sweep.finished"])
    sweep, _ = sweeps.create_sweep(session=session, tenant="t", base=SPEC, vary={"lambda": [0.0, 0.1]},
                                   specs=[SPEC, SPEC], metadata={"exp": "e1"})
    session.commit()
    first, second = sweeps.sweep_runs(session=session, sweep=sweep)
    assert first.meta == second.meta == {"exp": "e1"}  # a sweep's metadata is on its runs
    leases.claim(session, type(first), first.id, owner="a", lease_seconds=60)
    runs.set_status(session=session, run_id=first.id, status="failed", expect=("running",))
    session.commit()
    assert _events(session, "sweep.finished") == []  # the other run is still queued
    runs.request_cancel(session=session, run=second)
    session.commit()
    assert _events(session, "sweep.finished") == ["sweep.finished"]
    data = session.scalar(select(WebhookEvent.payload)).get("data")
    assert data["status"] == "failed" and data["counts"] == {"failed": 1, "cancelled": 1}
    assert data["metadata"] == {"exp": "e1"}


def test_one_worker_claims_a_delivery_and_a_failed_try_is_due_again_after_its_backoff(session):
    endpoint = _endpoint(session)
    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    session.commit()
    runs.request_cancel(session=session, run=run)
    session.commit()
    (due,) = webhooks.due_deliveries(session=session, limit=10)
    assert webhooks.claim_delivery(session=session, delivery_id=due, hold_seconds=60)
    assert not webhooks.claim_delivery(session=session, delivery_id=due, hold_seconds=60)  # held
    assert webhooks.due_deliveries(session=session, limit=10) == []
    webhooks.record_attempt(session=session, delivery_id=due, succeeded=False, response_code=500, error="HTTP 500",
                            retry_in=-1)  # due again at once
    assert webhooks.due_deliveries(session=session, limit=10) == [due]
    assert webhooks.claim_delivery(session=session, delivery_id=due, hold_seconds=60)
    webhooks.record_attempt(session=session, delivery_id=due, succeeded=True, response_code=204, error=None,
                            retry_in=None)
    session.commit()
    (row,), _ = webhooks.list_deliveries(session=session, tenant="t", endpoint_id=endpoint, limit=10)
    assert (row.status, row.attempts, row.last_response_code, row.event.type) == ("succeeded", 2, 204, "run.cancelled")
    assert row.next_attempt_at is None and row.finished_at is not None


def test_a_tenant_may_have_as_many_endpoints_as_the_server_allows_runs_own_not_counted(session):
    from service import webhooks as service
    from service.errors import Problem
    from store.settings import Settings

    settings = Settings(webhook_allow_private=True, max_webhook_endpoints=2)

    def create(tenant: str) -> None:
        service.create_endpoint(session, settings, tenant, url="http://127.0.0.1:9/", events=None, description=None)

    run, _ = runs.create_run(session=session, tenant="t", spec=SPEC)
    _endpoint(session, run_id=run.id)  # a run's own webhook: not counted
    create("t")
    create("t")
    with pytest.raises(Problem) as refused:
        create("t")
    assert (refused.value.status, refused.value.code, refused.value.extensions) == (409, "limit-reached", {"limit": 2})
    create("u")  # per tenant
    assert webhooks.count_endpoints(session=session, tenant="t") == 2
