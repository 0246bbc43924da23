"""Webhook endpoints: where a tenant's events are POSTed (worker/webhooks.py signs and sends them).

An endpoint is a URL, the events it wants (all when left out) and a secret (`whsec_...`) that
is shown once, in the answer that creates it. The URL must be http(s), at most 2,048 characters,
and resolve to public addresses only unless REGDIFF_WEBHOOK_ALLOW_PRIVATE=true (a 422 naming
`url`; the worker checks again at every try). A run's own `webhook` is an endpoint too, bound to
the run (`run_id`): it hears that run's events only and goes when the run is deleted.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.errors import Problem, invalid, invalid_fields
from service.lookup import found, page
from store import webhooks as stored
from store.settings import Settings
from store.tables import WebhookDelivery, WebhookEndpoint
from worker.webhooks import TargetRefused, check_target, new_secret

RUN_WEBHOOK_EVENTS = tuple(e for e in stored.EVENTS if e != "sweep.finished")  # a run is no sweep


def check_url(url: str, settings: Settings, field: str = "url") -> str:
    """The URL, or a 422 naming `field`: its shape, and where its host resolves (the SSRF guard)."""
    try:
        check_target(url, allow_private=settings.webhook_allow_private)
    except TargetRefused as exc:
        raise invalid(field, str(exc)) from None
    return url


def check_events(events: list[str] | None, allowed: tuple[str, ...], default: tuple[str, ...],
                 field: str = "events") -> list[str]:
    """The events asked for, in a stable order without repeats; left out: `default`."""
    if events is None:
        return list(default)
    if not events:
        raise invalid(field, f"give at least one event, or leave `{field}` out for {', '.join(default)}")
    unknown = [e for e in dict.fromkeys(events) if e not in allowed]
    if unknown:
        raise invalid_fields([{"field": field, "message": f"unknown event {e!r}; allowed: {', '.join(allowed)}"}
                              for e in unknown])
    return [e for e in allowed if e in events]


def create_endpoint(session: Session, settings: Settings, tenant: str, *, url: str, events: list[str] | None,
                    description: str | None) -> WebhookEndpoint:
    """Check, store and commit; the returned endpoint's `secret` is shown to the caller this once."""
    limit = settings.max_webhook_endpoints
    if limit and stored.count_endpoints(session=session, tenant=tenant) >= limit:
        raise Problem(409, detail=f"this tenant has {limit} webhook endpoints, the most the server allows"
                      " (REGDIFF_MAX_WEBHOOK_ENDPOINTS); delete one first", code="limit-reached",
                      extensions={"limit": limit})
    chosen = check_events(events, stored.EVENTS, stored.EVENTS)
    endpoint = stored.create_endpoint(session=session, tenant=tenant, url=check_url(url, settings), events=chosen,
                                      secret=new_secret(), description=description)
    session.commit()
    return endpoint


def check_run_webhook(settings: Settings, url: str, events: list[str] | None) -> list[str]:
    """A run's `webhook`, checked before the run is stored (422 naming webhook.url / webhook.events)."""
    chosen = check_events(events, RUN_WEBHOOK_EVENTS, stored.RUN_EVENTS, field="webhook.events")
    check_url(url, settings, field="webhook.url")
    return chosen


def add_run_webhook(session: Session, tenant: str, run_id: str, *, url: str, events: list[str]) -> WebhookEndpoint:
    """The run's own endpoint, in the transaction that stores the run (checked by check_run_webhook)."""
    return stored.create_endpoint(session=session, tenant=tenant, url=url, events=events, secret=new_secret(),
                                  run_id=run_id)


def list_endpoints(session: Session, tenant: str, *, limit: int,
                   after: str | None) -> tuple[list[WebhookEndpoint], bool]:
    return page(stored.list_endpoints, session=session, tenant=tenant, limit=limit, after=after)


def get_endpoint(session: Session, tenant: str, endpoint_id: str) -> WebhookEndpoint:
    """Another tenant's endpoint answers 404, exactly like a missing one."""
    return found(stored.get_endpoint(session=session, tenant=tenant, endpoint_id=endpoint_id), "webhook endpoint",
                 endpoint_id)


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Removes the endpoint and its delivery log; its pending deliveries are not sent."""
    session.delete(endpoint)
    session.commit()


def deliveries(session: Session, endpoint: WebhookEndpoint, *, limit: int,
               after: str | None) -> tuple[list[WebhookDelivery], bool]:
    return page(stored.list_deliveries, session=session, tenant=endpoint.tenant, endpoint_id=endpoint.id,
                limit=limit, after=after)
