"""RFC 9457 problem+json for every error: a `type` and `code` per kind of problem (documented at
`/problems/<code>`), the HTTP phrase as `title`, a `detail` in prose, the fields at fault, and
the request's id."""

from __future__ import annotations

import logging
from http import HTTPStatus
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_id import current_request_id
from models.spec import FieldError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
PROBLEMS_PATH = "/problems"


@dataclass(frozen=True)
class ProblemKind:
    """One distinct situation a client may want to tell apart: its `code` is stable (clients
    branch on it), its `type` is `/problems/<code>`, a page there says what it means."""

    code: str
    status: int
    meaning: str

    @property
    def type(self) -> str:
        return f"{PROBLEMS_PATH}/{self.code}"


KINDS: dict[str, ProblemKind] = {kind.code: kind for kind in (
    ProblemKind("bad-request", 400, "The request cannot be read: a malformed header, a NUL character in the"
                " URL or a value that cannot be stored. Fix the request; retrying it as is will fail again."),
    ProblemKind("unauthorized", 401, "No API key, or an unknown or revoked one. Send"
                " 'Authorization: Bearer <key>'; keys are made with `regdiff-admin keys create`."),
    ProblemKind("not-found", 404, "No such resource for this tenant (another tenant's resources are"
                " reported exactly like missing ones), or no such path."),
    ProblemKind("method-not-allowed", 405, "The path exists but not with this HTTP method."),
    ProblemKind("conflict", 409, "The resource is not in a state that allows this (e.g. a finished run"
                " cannot be cancelled, a run without a checkpoint cannot be sampled)."),
    ProblemKind("payload-too-large", 413, "The request body, or the uploaded file, is over the server's"
                " limit (REGDIFF_MAX_BODY_BYTES, REGDIFF_MAX_UPLOAD_BYTES)."),
    ProblemKind("validation", 422, "A field has a value that is not allowed; `errors` lists each field at"
                " fault with the allowed values."),
    ProblemKind("invalid-upload", 422, "The uploaded dataset was refused: `errors[].file` names the upload"
                " or the archive member at fault and says what is allowed."),
    ProblemKind("idempotency-key-reused", 422, "This Idempotency-Key was used before with a different"
                " request body; use a new key for a new request."),
    ProblemKind("rate-limited", 429, "Too many requests for this key (or address) per minute; retry after"
                " the Retry-After header's seconds."),
    ProblemKind("quota-exceeded", 429, "This tenant has as many queued runs as the server allows"
                " (REGDIFF_MAX_QUEUED_RUNS); retry once some have started, or cancel some."),
    ProblemKind("internal", 500, "An unexpected server error; it has been logged with the request_id,"
                " which is what to quote when reporting it."),
    ProblemKind("unavailable", 503, "The server cannot answer now (starting, or a dependency is down);"
                " retry later."),
    ProblemKind("uploads-busy", 503, "The server is parsing as many uploads as it allows at once"
                " (REGDIFF_MAX_CONCURRENT_UPLOADS); retry after the Retry-After header's seconds."),
)}
_DEFAULT_CODE = {kind.status: kind.code for kind in reversed(KINDS.values())}  # the first kind per status
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


class Problem(Exception):
    """Raise from a route: becomes a problem+json response.

    `code` picks the kind (a key of KINDS; by default the usual one for `status`). `title` is the
    route's own short label, the detail when none is given; the body's `title` is always the
    HTTP phrase, so a client never parses it."""

    def __init__(self, status: int, title: str = "", detail: str = "", *,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
                 code: str | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers
        self.code = code or default_code(status)
        if self.code not in KINDS:
            raise ValueError(f"unknown problem code {self.code!r}; add it to api.errors.KINDS")


def default_code(status: int) -> str:
    return _DEFAULT_CODE.get(status, "internal" if status >= 500 else "bad-request")


def not_found(kind: str, ident: str) -> Problem:
    return Problem(404, "Not Found", f"no {kind} with id {ident!r}")


def invalid(field: str, message: str) -> Problem:
    return Problem(422, "Invalid request", f"{field}: {message}", errors=[{"field": field, "message": message}])


def problem_body(status: int, detail: str = "", errors: list | None = None, code: str | None = None,
                 request_id: str | None = None) -> dict:
    """The RFC 9457 body: type and code by kind, title by status, the request's id to quote."""
    kind = KINDS[code or default_code(status)]
    body: dict[str, Any] = {"type": kind.type, "code": kind.code, "title": phrase(status), "status": status,
                            "detail": detail or phrase(status)}
    if errors:
        body["errors"] = errors
    request_id = request_id or current_request_id()
    if request_id:
        body["request_id"] = request_id
    return body


def problem_response(status: int, detail: str = "", errors: list | None = None,
                     headers: dict[str, str] | None = None, code: str | None = None,
                     request_id: str | None = None) -> JSONResponse:
    return JSONResponse(problem_body(status, detail, errors, code, request_id), status_code=status,
                        media_type=PROBLEM, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        cause = (err.get("ctx") or {}).get("error")
        field = cause.field if isinstance(cause, FieldError) else ".".join(loc) or "body"
        message = str(cause) if cause is not None else err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        out.append({"field": field, "message": message})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail or exc.title, exc.errors, exc.headers, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, detail, errors)

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


class ProblemModel(BaseModel):
    """For the OpenAPI document: the shape of every error."""

    type: str
    code: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None
    request_id: str | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemModel, "content": {PROBLEM: {}}} for status in (400, 401, 404, 409, 422, 429)
}
