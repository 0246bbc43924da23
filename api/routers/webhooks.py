"""Webhook endpoints: where this tenant's events are POSTed, signed (Standard Webhooks), and their
delivery log. service/webhooks.py checks the URL (the SSRF guard) and the events; the workers
deliver (worker/webhooks.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps.auth import TenantDep
from api.deps.ownership import OwnedEndpoint
from api.deps.pagination import PageDep, next_cursor
from api.deps.session import SessionDep, SettingsDep
from api.openapi import CONFLICT
from api.schemas import (
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPublic,
    WebhookEndpointsPublic,
)
from service import webhooks as service

router = APIRouter(prefix="/v1/webhook_endpoints", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookEndpointCreated, responses=CONFLICT)
def create_webhook(body: WebhookEndpointCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                   response: Response) -> WebhookEndpointCreated:
    """The answer carries the signing secret (`whsec_...`): it is shown this once."""
    endpoint = service.create_endpoint(session, settings, tenant, url=body.url, events=body.events,
                                       description=body.description)
    public = WebhookEndpointCreated.of(endpoint)
    response.headers["Location"] = public.urls["self"]
    return public


@router.get("", response_model=WebhookEndpointsPublic)
def list_webhooks(session: SessionDep, tenant: TenantDep, page: PageDep) -> WebhookEndpointsPublic:
    rows, has_more = service.list_endpoints(session, tenant, limit=page.limit, after=page.after)
    return WebhookEndpointsPublic(data=[WebhookEndpointPublic.of(e) for e in rows], has_more=has_more,
                                  next_cursor=next_cursor(rows, has_more))


@router.get("/{endpoint_id}", response_model=WebhookEndpointPublic)
def get_webhook(endpoint: OwnedEndpoint) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.of(endpoint)


@router.delete("/{endpoint_id}", status_code=204)
def delete_webhook(endpoint: OwnedEndpoint, session: SessionDep) -> Response:
    """Removes the endpoint and its delivery log; what it had pending is not sent."""
    service.delete_endpoint(session, endpoint)
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries", response_model=WebhookDeliveriesPublic)
def webhook_deliveries(endpoint: OwnedEndpoint, session: SessionDep, page: PageDep) -> WebhookDeliveriesPublic:
    """Newest first: each event sent (or being sent) here, its tries and the last answer."""
    rows, has_more = service.deliveries(session, endpoint, limit=page.limit, after=page.after)
    return WebhookDeliveriesPublic(data=[WebhookDeliveryPublic.of(d) for d in rows], has_more=has_more,
                                   next_cursor=next_cursor(rows, has_more))
