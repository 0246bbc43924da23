"""`Client` and `AsyncClient`: configuration once, resources as attributes."""

from __future__ import annotations

import os
from typing import Any, Self

import httpx

from ._http import DEFAULT_TIMEOUT, AsyncTransport, RetryPolicy, SyncTransport, default_headers
from ._plan import AsyncRunner, Plan, SyncRunner, fetch
from .resources import (
    AsyncRuns,
    AsyncSamples,
    AsyncSweeps,
    AsyncWebhookEndpoints,
    Checkpoints,
    Datasets,
    Runs,
    Samples,
    Sweeps,
    WebhookEndpoints,
)

DEFAULT_URL = "http://127.0.0.1:8000"


def _settings(
    base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout | None
) -> dict[str, Any]:
    """httpx client arguments: explicit values, then REGDIFF_URL / REGDIFF_API_KEY, then defaults."""
    api_key = api_key if api_key is not None else os.environ.get("REGDIFF_API_KEY")
    return {
        "base_url": (base_url or os.environ.get("REGDIFF_URL") or DEFAULT_URL).rstrip("/"),
        "headers": default_headers(api_key),
        "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
    }


def _list_data(body: Any) -> Any:
    return body["data"] if isinstance(body, dict) and "data" in body else body


def _regularizers() -> Plan[list[dict[str, Any]]]:
    return fetch("/v1/regularizers", _list_data)


def _presets() -> Plan[list[dict[str, Any]]]:
    return fetch("/v1/presets", _list_data)


def _health() -> Plan[dict[str, Any]]:
    return fetch("/healthz")


class Client:
    """Synchronous client. `Client()` reads REGDIFF_URL and REGDIFF_API_KEY.

    `max_retries` retries connection errors, 429 and 5xx with backoff 0.5 s doubling up to
    `max_backoff` (lower it in tests); `Retry-After` up to 60 s is honoured as given.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        max_backoff: float = 8.0,
    ):
        settings = _settings(base_url, api_key, timeout)
        self.base_url = settings["base_url"]
        self._http = httpx.Client(**settings)
        transport = SyncTransport(self._http, RetryPolicy(max_retries=max_retries, max_backoff=max_backoff))
        self._runner = SyncRunner(transport)
        self.runs = Runs(self._runner)
        self.samples = Samples(self._runner)
        self.checkpoints = Checkpoints(self._runner)
        self.datasets = Datasets(self._runner)
        self.sweeps = Sweeps(self._runner)
        self.webhook_endpoints = WebhookEndpoints(self._runner)

    def regularizers(self) -> list[dict[str, Any]]:
        """Names, parameter schemas and docs of the penalties a spec may name."""
        return self._runner.run(_regularizers())

    def presets(self) -> list[dict[str, Any]]:
        return self._runner.run(_presets())

    def health(self) -> dict[str, Any]:
        return self._runner.run(_health())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of `Client` (runs, samples, sweeps, webhook endpoints and the service calls)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        max_backoff: float = 8.0,
    ):
        settings = _settings(base_url, api_key, timeout)
        self.base_url = settings["base_url"]
        self._http = httpx.AsyncClient(**settings)
        transport = AsyncTransport(self._http, RetryPolicy(max_retries=max_retries, max_backoff=max_backoff))
        self._runner = AsyncRunner(transport)
        self.runs = AsyncRuns(self._runner)
        self.samples = AsyncSamples(self._runner)
        self.sweeps = AsyncSweeps(self._runner)
        self.webhook_endpoints = AsyncWebhookEndpoints(self._runner)

    async def regularizers(self) -> list[dict[str, Any]]:
        return await self._runner.run(_regularizers())

    async def presets(self) -> list[dict[str, Any]]:
        return await self._runner.run(_presets())

    async def health(self) -> dict[str, Any]:
        return await self._runner.run(_health())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
