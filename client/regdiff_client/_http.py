"""Transport: one HTTP request with retries, for the sync and the async runner.

openai-python's habits: retry connection errors, 429 and 5xx (default 2 retries) with
exponential backoff 0.5 s..8 s and jitter, honour `Retry-After`, and send the same
`Idempotency-Key` on every attempt so a retried create cannot make two runs.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from ._errors import connection_error, error_for
from ._plan import Call
from ._version import __version__

log = logging.getLogger("regdiff_client")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
RETRY_AFTER_CEILING = 60.0  # a longer Retry-After is not worth blocking on: use our own backoff


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date), or None if absent or unusable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if seconds <= RETRY_AFTER_CEILING else None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Doubling from `initial_backoff`, capped at `max_backoff`, minus up to 25 % jitter."""
        return min(self.initial_backoff * 2**attempt, self.max_backoff) * (1 - 0.25 * random.random())

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds before the next attempt, or None when this outcome is final."""
        if attempt >= self.max_retries:
            return None
        if response is None:  # no answer: connection refused, reset, timed out
            return self.backoff(attempt)
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = parse_retry_after(response.headers)
            return self.backoff(attempt) if retry_after is None else retry_after
        return None


class _Transport:
    """What both transports share: building requests and reading results."""

    def __init__(self, http: httpx.Client | httpx.AsyncClient, policy: RetryPolicy):
        self._http = http
        self.policy = policy

    def _build(self, call: Call) -> httpx.Request:
        headers = dict(call.headers or {})
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        return self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            files=call.files,
            data=call.data,
            headers=headers,
        )

    def _delay_after_failure(self, call: Call, attempt: int, exc: httpx.TransportError) -> float:
        """Seconds before retrying after no answer; raises the connection error once retries are spent."""
        delay = self.policy.delay(attempt, None)
        if delay is None:
            raise connection_error(exc) from exc
        log.info("retrying %s %s in %.2f s after %s", call.method, call.path, delay, type(exc).__name__)
        return delay

    def _delay_after(self, call: Call, attempt: int, response: httpx.Response) -> float | None:
        delay = self.policy.delay(attempt, response)
        if delay is not None:
            log.info("retrying %s %s in %.2f s after %d", call.method, call.path, delay, response.status_code)
        return delay

    @staticmethod
    def _decode(call: Call, response: httpx.Response) -> Any:
        if call.binary:
            return response.content
        return response.json() if response.content else None


def default_headers(api_key: str | None) -> dict[str, str]:
    """Sent on every request. `X-Regdiff-Client` is the header a cross-site page cannot send, which
    the server asks of a state-changing request without a key (an upload to a keyless local api)."""
    headers = {"User-Agent": f"regdiff-client/{__version__}", "Accept": "application/json", "X-Regdiff-Client": "1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class SyncTransport(_Transport):
    _http: httpx.Client

    def request(self, call: Call) -> Any:
        return self._decode(call, self._send(call, stream=False))

    def open_stream(self, call: Call) -> httpx.Response:
        return self._send(call, stream=True)

    def _send(self, call: Call, *, stream: bool) -> httpx.Response:
        """A 2xx response, or the typed error once retries are spent."""
        attempt = 0
        delay: float | None
        while True:
            try:
                response = self._http.send(self._build(call), stream=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_failure(call, attempt, exc)
            else:
                delay = self._delay_after(call, attempt, response)
                if delay is None:
                    if response.is_error:
                        response.read()
                        response.close()
                        raise error_for(response)
                    return response
                response.close()
            time.sleep(delay)
            attempt += 1


class AsyncTransport(_Transport):
    _http: httpx.AsyncClient

    async def request(self, call: Call) -> Any:
        return self._decode(call, await self._send(call, stream=False))

    async def open_stream(self, call: Call) -> httpx.Response:
        return await self._send(call, stream=True)

    async def _send(self, call: Call, *, stream: bool) -> httpx.Response:
        attempt = 0
        delay: float | None
        while True:
            try:
                response = await self._http.send(self._build(call), stream=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_failure(call, attempt, exc)
            else:
                delay = self._delay_after(call, attempt, response)
                if delay is None:
                    if response.is_error:
                        await response.aread()
                        await response.aclose()
                        raise error_for(response)
                    return response
                await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1
