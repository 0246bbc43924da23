"""Webhook endpoints: where the server POSTs this tenant's events, and each endpoint's delivery log.

The endpoint `create` returns carries `secret` (whsec_...), shown this once: keep it to check
deliveries with `regdiff_client.webhooks.verify`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from .._plan import Plan, create, fetch, paginate, remove
from ..types import WebhookDelivery, WebhookEndpoint
from ._base import AsyncResource, SyncResource

PATH = "/v1/webhook_endpoints"


def _create(url: str, events: Sequence[str] | None, description: str | None) -> Plan[WebhookEndpoint]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = list(events)
    if description is not None:
        body["description"] = description
    return create(PATH, WebhookEndpoint.from_json, json=body)


class WebhookEndpoints(SyncResource):
    def create(self, url: str, *, events: Sequence[str] | None = None,
               description: str | None = None) -> WebhookEndpoint:
        """`events`: any of run.running, run.succeeded, run.failed, run.cancelled, sweep.finished,
        samples.succeeded (default: all). The result's `secret` is shown this once."""
        return self._runner.run(_create(url, events, description))

    def list(self, *, limit: int | None = None) -> Iterator[WebhookEndpoint]:
        return self._runner.iterate(paginate(PATH, WebhookEndpoint.from_json, limit=limit))

    def get(self, endpoint_id: str) -> WebhookEndpoint:
        return self._runner.run(fetch(f"{PATH}/{endpoint_id}", WebhookEndpoint.from_json))

    def delete(self, endpoint_id: str) -> None:
        self._runner.run(remove(f"{PATH}/{endpoint_id}"))

    def deliveries(self, endpoint_id: str, *, limit: int | None = None) -> Iterator[WebhookDelivery]:
        """Newest first: each event sent (or being sent) there, its tries and the last answer."""
        return self._runner.iterate(paginate(f"{PATH}/{endpoint_id}/deliveries", WebhookDelivery.from_json,
                                             limit=limit))


class AsyncWebhookEndpoints(AsyncResource):
    async def create(self, url: str, *, events: Sequence[str] | None = None,
                     description: str | None = None) -> WebhookEndpoint:
        return await self._runner.run(_create(url, events, description))

    def list(self, *, limit: int | None = None) -> AsyncIterator[WebhookEndpoint]:
        return self._runner.iterate(paginate(PATH, WebhookEndpoint.from_json, limit=limit))

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._runner.run(fetch(f"{PATH}/{endpoint_id}", WebhookEndpoint.from_json))

    async def delete(self, endpoint_id: str) -> None:
        await self._runner.run(remove(f"{PATH}/{endpoint_id}"))

    def deliveries(self, endpoint_id: str, *, limit: int | None = None) -> AsyncIterator[WebhookDelivery]:
        return self._runner.iterate(paginate(f"{PATH}/{endpoint_id}/deliveries", WebhookDelivery.from_json,
                                             limit=limit))
