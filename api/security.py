"""Transport-level protections: body size limits, security headers, and per-key rate limits.

The two middlewares are plain ASGI (no BaseHTTPMiddleware), so they see the receive stream
itself: a body is counted while it arrives, and refused before the app reads (or Starlette
spools to disk) more than the limit.

Why not `starlette.middleware.body_limit` / FastAPI's `max_body_size`: they count the same
way, but when a declared Content-Length is too large and the route never reads the body, the
route still *runs* (a cancel or a delete would take effect) and the 413 is a text/plain swap
of its response. Here an over-limit Content-Length is answered before the app is called.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_body

PROBLEM = b"application/problem+json"
DOCS_PATHS = ("/docs", "/redoc")  # pages that set their own CSP (api/docs.py); their assets may be cached
# Nothing may load, frame or be framed: the api serves JSON and images (its HTML pages set their own).
STRICT_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


async def send_problem(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A problem+json answer from a middleware, before (or instead of) the app."""
    body = json.dumps(problem_body(status, detail)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", PROBLEM), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised from receive() once the body passes the limit; the app's handlers make it problem+json."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this endpoint's limit of {limit:,} bytes")


class BodyLimitMiddleware:
    """413 problem+json for bodies over `limit_for(scope)` bytes, counted as they arrive."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared == -1:
            return await send_problem(send, 400, "invalid Content-Length header",
                                      [(b"connection", b"close")])
        if declared is not None and declared > limit:
            # Refused before a byte of the body is read; closing spares the server draining it.
            return await send_problem(send, 413, BodyTooLarge(limit).detail,
                                      [(b"connection", b"close")])
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no exception handler turned it into a response
            if started:
                raise
            await send_problem(send, 413, exc.detail, [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent (chunked), -1 when unparseable."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


class NulInUrlMiddleware:
    """400 for a NUL character in the path or the query: no id or filter can hold one, and
    PostgreSQL refuses it in a text parameter (a 500 deep in a query otherwise)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            return await send_problem(send, 400, "the URL holds a NUL character (%00)")
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """nosniff, no framing, no referrer on every response; no-store and a strict CSP off the docs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"].startswith(DOCS_PATHS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer")]
                if not docs:
                    extra.append((b"content-security-policy", STRICT_CSP))
                    extra.append((b"cache-control", b"no-store"))  # per-tenant data: never in shared caches
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per API key, in this process's memory.

    Good enough for one api process: the limit protects the database from one runaway
    client, not a billing boundary. With N uvicorn workers or replicas each keeps its own
    buckets, so a key gets up to N times the rate; a shared limit would live in Redis.
    """

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) > 10_000:
                    self._prune(now)
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they are indistinguishable from new ones."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
