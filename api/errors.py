"""RFC 9457 problem+json for every error: a `type` and `code` per kind of problem (documented at
`/problems/<code>`), the HTTP phrase as `title`, a `detail` in prose, the fields at fault, and
the request's id."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_id import current_request_id
from service.errors import KINDS, Problem, default_code, detail_of, field_errors

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

# RFC 9110's reason phrases where Python 3.11's HTTPStatus still has the older RFC 7231 ones.
_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def phrase(status: int) -> str:
    """The HTTP reason phrase: a problem's `title` (RFC 9457), the same for every problem of a status."""
    if status in _PHRASES:
        return _PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, detail: str = "", errors: list | None = None, code: str | None = None,
                 request_id: str | None = None, extensions: dict[str, Any] | None = None) -> dict:
    """The RFC 9457 body: type and code by kind, title by status, the request's id to quote, and
    a problem's extension members (never overriding the standard ones)."""
    kind = KINDS[code or default_code(status)]
    body: dict[str, Any] = {**(extensions or {}), "type": kind.type, "code": kind.code, "title": phrase(status),
                            "status": status, "detail": detail or phrase(status)}
    if errors:
        body["errors"] = errors
    request_id = request_id or current_request_id()
    if request_id:
        body["request_id"] = request_id
    return body


def problem_response(status: int, detail: str = "", errors: list | None = None,
                     headers: dict[str, str] | None = None, code: str | None = None,
                     request_id: str | None = None, extensions: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(problem_body(status, detail, errors, code, request_id, extensions), status_code=status,
                        media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail or exc.title, exc.errors, exc.headers, exc.code,
                                extensions=exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc)
        return problem_response(422, detail_of(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail) if exc.detail != phrase(exc.status_code) else ""
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL in a text field, a
        # number out of range) — the client's input, not a server fault; the log keeps the cause.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                    type(exc.orig).__name__)
        return problem_response(400, "a value in this request cannot be stored or searched for"
                                " (a NUL character in a text field, or a number out of range)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette calls this outside the middlewares, so the request id is passed by hand.
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error on %s %s", request.method, request.url.path,
                      extra={"request_id": request_id or "-"})
        return problem_response(500, "an unexpected error occurred; it has been logged",
                                headers={"X-Request-ID": request_id} if request_id else None,
                                request_id=request_id)

