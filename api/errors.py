"""RFC 9457 problem+json for every error: a title, a detail, and the fields at fault.

Services raise service.errors.Problem; this module turns it (and FastAPI's own errors) into responses.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import Problem, detail_of, field_errors

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem_response(status: int, title: str, detail: str = "", errors: list | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail or title}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc)
        return problem_response(422, "Invalid request", detail_of(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}.get(exc.status_code)
        return problem_response(exc.status_code, title or _phrase(exc.status_code), str(exc.detail),
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL in a text field, a
        # number out of range) — the client's input, not a server fault; the log keeps the cause.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                    type(exc.orig).__name__)
        return problem_response(400, "Bad Request", "a value in this request cannot be stored or searched for"
                                " (a NUL character in a text field, or a number out of range)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal Server Error", "an unexpected error occurred; it has been logged")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ProblemModel(BaseModel):
    """For the OpenAPI document: the shape of every error."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemModel, "content": {PROBLEM: {}}} for code in (400, 401, 404, 409, 422, 429)
}
