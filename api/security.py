"""Transport-level protections: body size limits, security headers, the Host allowlist, and
what a request's transport says about it (through a proxy? over a UNIX socket? to which name?).

The two middlewares are plain ASGI (no BaseHTTPMiddleware), so they see the receive stream
itself: a body is counted while it arrives, and refused before the app reads (or Starlette
spools to disk) more than the limit.

Why not `starlette.middleware.body_limit` / FastAPI's `max_body_size`: they count the same
way, but when a declared Content-Length is too large and the route never reads the body, the
route still *runs* (a cancel or a delete would take effect) and the 413 is a text/plain swap
of its response. Here an over-limit Content-Length is answered before the app is called.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_body
from store.settings import Settings, is_loopback

PROBLEM = b"application/problem+json"
DOCS_PATHS = ("/docs", "/redoc")  # pages that set their own CSP (api/docs.py); their assets may be cached
# Nothing may load, frame or be framed: the api serves JSON and images (its HTML pages set their own).
STRICT_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


async def send_problem(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = (),
                       code: str | None = None) -> None:
    """A problem+json answer from a middleware, before (or instead of) the app."""
    body = json.dumps(problem_body(status, detail, code=code)).encode()
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
    """nosniff, no framing, no referrer on every response; no-store and a strict CSP off the docs;
    the RateLimit-* fields of the caller's window once a rate limit looked at it."""

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
                extra += scope.get("state", {}).get("rate_limit_headers", [])  # set by api/rate_limiter.py
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# ---- what the transport says about a request ---------------------------------------------------

# A proxy or tunnel in front of the api (nginx, cloudflared, ngrok, a load balancer) adds one of these.
PROXY_HEADERS = (b"forwarded", b"x-real-ip", b"via", b"cf-connecting-ip")


def through_proxy(scope: Scope) -> str | None:
    """The name of the first proxy header of the request, or None."""
    for name, _ in scope["headers"]:
        if name in PROXY_HEADERS or name.startswith(b"x-forwarded-"):
            return name.decode("latin-1")
    return None


def over_socket(scope: Scope) -> bool:
    """A UNIX socket (uvicorn --uds) has no peer and no server address: anything local may be behind it."""
    return scope.get("client") is None or scope.get("server") is None


def host_name(scope: Scope) -> str | None:
    """The Host header's name without its port, lower case ("[::1]:8000" -> "::1"); None if absent."""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[1:].partition("]")[0]
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return None


def is_loopback_name(host: str) -> bool:
    """localhost, *.localhost (RFC 6761: never resolved off the machine), 127.0.0.0/8, ::1."""
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class HostAllowlistMiddleware:
    """400 problem+json for a Host this server was not told it is called by: DNS rebinding.

    A page on an attacker's domain that re-resolves to 127.0.0.1 reaches the api with its own
    domain as Host; no browser sends a loopback name or a bare IP for it. So loopback names,
    REGDIFF_HOST, and the IP address the connection arrived on (what a Kubernetes probe or a
    client dialing the address sends) are always accepted, plus REGDIFF_ALLOWED_HOSTS
    ("*.example.com" covers subdomains, "*" turns the check off). Every path is checked, the
    health checks included, so there is one rule to configure."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.names = {settings.host.strip("[]").lower(), *(h.strip("[]").lower() for h in settings.allowed_hosts)}
        self.suffixes = tuple(name[1:] for name in self.names if name.startswith("*."))

    def allowed(self, scope: Scope) -> bool:
        host = host_name(scope)
        if host is None or "*" in self.names or host in self.names or is_loopback_name(host):
            return True  # no Host: HTTP/1.0 or a raw client, never a browser
        server = scope.get("server")
        if server and is_ip(host) and host == str(server[0]).strip("[]").lower():
            return True
        return bool(self.suffixes) and host.endswith(self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allowed(scope):
            return await send_problem(
                send, 400, f"Host {host_name(scope)!r} is not one this server answers to; add it to"
                " REGDIFF_ALLOWED_HOSTS (comma-separated) if it is this server's name", code="host-not-allowed")
        await self.app(scope, receive, send)

