"""Typed exceptions: problem+json bodies become one class per status so callers can `except` them."""

from __future__ import annotations

from typing import Any

import httpx


class RegdiffError(Exception):
    """Base of everything this package raises on purpose."""


class APIError(RegdiffError):
    """An error answer (RFC 9457 problem+json) or a failure to get one.

    `errors` keeps the server's list of `{"field", "message"}` dicts; `field` is the first
    field named, the one a form or a CLI flag should point at. `code` is the server's stable
    machine-readable kind (e.g. "rate-limited" vs "quota-exceeded", both 429), `type` its URI,
    `request_id` the id to quote when reporting a failure.
    """

    def __init__(
        self,
        title: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        type: str | None = None,
        body: Any = None,
        request_id: str | None = None,
        code: str | None = None,
    ):
        self.title = title
        self.code = code
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.type = type
        self.body = body
        self.request_id = request_id
        super().__init__(self._message())

    @property
    def field(self) -> str | None:
        return next((e.get("field") for e in self.errors if e.get("field")), None)

    def _message(self) -> str:
        head = f"{self.status} {self.title}" if self.status else self.title
        parts = [head + (f": {self.detail}" if self.detail and self.detail != self.title else "")]
        for error in self.errors:  # each field once, unless the detail already says it
            line = f"{error.get('field') or '-'}: {error.get('message', '')}"
            if line not in (self.detail or ""):
                parts.append("  " + line)
        return "\n".join(parts)


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class UnprocessableEntityError(APIError):
    pass


class RateLimitError(APIError):
    pass


class InternalServerError(APIError):
    pass


class APIConnectionError(APIError):
    """No answer at all (refused, reset, DNS); retried before it is raised."""

    def __init__(self, message: str = "Connection error", *, cause: BaseException | None = None):
        super().__init__(message, detail=str(cause) if cause else None)


class APITimeoutError(APIConnectionError):
    def __init__(self, *, cause: BaseException | None = None):
        super().__init__("Request timed out", cause=cause)


class JobFailedError(RegdiffError):
    """`wait()` saw a run or sample job end `failed`; `.job` is its final state."""

    def __init__(self, job: Any):
        self.job = job
        super().__init__(f"{job.id} {job.status}: {job.error or 'no reason given'}")


class WaitTimeoutError(RegdiffError, TimeoutError):
    """`wait(timeout=...)` ran out before the job finished; `.job` is its last state."""

    def __init__(self, job: Any, timeout: float):
        self.job = job
        super().__init__(f"{job.id} still {job.status} after {timeout:g} s")


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(cause=exc)
    return APIConnectionError(cause=exc)


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for(response: httpx.Response) -> APIError:
    """Build the typed error for a non-2xx response, whatever its body (proxies send HTML)."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    problem = body if isinstance(body, dict) else {}
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIError
    errors = problem.get("errors")
    return cls(
        problem.get("title") or response.reason_phrase or "HTTP error",
        status=response.status_code,
        detail=problem.get("detail")
        or (body.strip()[:500] if isinstance(body, str) and body.strip() else None),
        errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None,
        type=problem.get("type"),
        body=body,
        request_id=response.headers.get("x-request-id") or problem.get("request_id"),
        code=problem.get("code"),
    )
