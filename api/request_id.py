"""`X-Request-ID`: the id a client, a proxy or this server gives each request, so one failure can
be found in the log from what the client saw.

A client's id is kept when it is safe to echo and to log (1 to 128 of `A-Z a-z 0-9 . _ : -`:
no spaces, quotes or newlines that could forge a log line or a header); otherwise a fresh one is
made. It is echoed on every response, put in problem bodies (`request_id`) and in every log line
of the `api` loggers (`[request_id]`), through a context variable that the threadpool running
sync routes inherits.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return _current.get()


def accepted_or_new(value: bytes | None) -> str:
    """The client's id when it is safe to echo and log, else a new random one."""
    text = value.decode("latin-1") if value is not None else ""
    return text if _SAFE.fullmatch(text) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Outermost: every answer, middleware problems included, carries the request's id."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        request_id = accepted_or_new(given)
        token = _current.set(request_id)
        # For the 500 handler, which Starlette runs outside every middleware (and this context).
        scope.setdefault("state", {})["request_id"] = request_id

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            _current.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds `record.request_id` ("-" outside a request) for the format below, unless the call
    passed one (`extra={"request_id": ...}`, where the context is gone: the 500 handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


def log_with_request_ids(logger: logging.Logger) -> None:
    """One stderr handler on the api's logger whose lines carry the request id (once per process).

    Records still propagate, so an application that configures the root logger keeps them."""
    if any(isinstance(f, RequestIdLogFilter) for h in logger.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logger.addHandler(handler)
