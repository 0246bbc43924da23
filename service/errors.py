"""The one error a service raises: a status, a title, a detail, and the fields at fault.

Services are called from HTTP routes today, but they do not import the web framework: the api
turns a `Problem` into an RFC 9457 problem+json response (api/errors.py). The status is a
classification the caller can act on (422 bad field, 404 absent, 409 wrong state, 429 try later),
which is why it is carried here rather than re-derived from a table of exception classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.spec import FieldError

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
    ProblemKind("host-not-allowed", 400, "The Host header names a server this api does not answer for (a"
                " DNS-rebinding guard); list the server's names in REGDIFF_ALLOWED_HOSTS."),
    ProblemKind("unauthorized", 401, "No API key, or an unknown or revoked one. Send"
                " 'Authorization: Bearer <key>'; keys are made with `regdiff-admin keys create`."),
    ProblemKind("forbidden", 403, "This key (or, without a key, this address) may not read this page:"
                " /metrics answers loopback clients, or any client with an API key."),
    ProblemKind("cross-site-request", 403, "A state-changing request without an API key must send"
                " 'Content-Type: application/json' or an 'X-Regdiff-Client' header, which a cross-site page"
                " cannot forge; the SDK and CLI send it."),
    ProblemKind("not-found", 404, "No such resource for this tenant (another tenant's resources are"
                " reported exactly like missing ones), or no such path."),
    ProblemKind("method-not-allowed", 405, "The path exists but not with this HTTP method."),
    ProblemKind("conflict", 409, "The resource is not in a state that allows this (e.g. a finished run"
                " cannot be cancelled, a run without a checkpoint cannot be sampled)."),
    ProblemKind("limit-reached", 409, "This tenant has as many of this resource as the server allows (webhook"
                " endpoints: REGDIFF_MAX_WEBHOOK_ENDPOINTS); `limit` gives the figure. Delete one first."),
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
    ProblemKind("storage-quota-exceeded", 429, "This tenant stores as many bytes as the server allows"
                " (REGDIFF_TENANT_BYTE_QUOTA: checkpoints, sample arrays and images, uploads); `used_bytes`,"
                " `limit_bytes` and `request_bytes` give the figures. Delete runs, sweeps, sample jobs or"
                " datasets to make room; waiting does not free any."),
    ProblemKind("larger-than-storage-quota", 413, "This upload alone is larger than the tenant's byte quota"
                " (REGDIFF_TENANT_BYTE_QUOTA); `request_bytes` and `limit_bytes` give the figures."),
    ProblemKind("internal", 500, "An unexpected server error; it has been logged with the request_id,"
                " which is what to quote when reporting it."),
    ProblemKind("unavailable", 503, "The server cannot answer now (starting, or a dependency is down);"
                " retry later."),
    ProblemKind("uploads-busy", 503, "The server is parsing as many uploads as it allows at once"
                " (REGDIFF_MAX_CONCURRENT_UPLOADS); retry after the Retry-After header's seconds."),
)}
_DEFAULT_CODE = {kind.status: kind.code for kind in reversed(KINDS.values())}  # the first kind per status


class Problem(Exception):
    """Raise from a service or a route: api/errors.py turns it into a problem+json response.

    `code` picks the kind (a key of KINDS; by default the usual one for `status`). `title` is the
    route's own short label, the detail when none is given; the body's `title` is always the
    HTTP phrase, so a client never parses it."""

    def __init__(self, status: int, title: str = "", detail: str = "", *,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
                 code: str | None = None, extensions: dict[str, Any] | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers
        self.extensions = extensions  # RFC 9457 extension members: figures a client reads, e.g. used_bytes
        self.code = code or default_code(status)
        if self.code not in KINDS:
            raise ValueError(f"unknown problem code {self.code!r}; add it to service.errors.KINDS")


def default_code(status: int) -> str:
    return _DEFAULT_CODE.get(status, "internal" if status >= 500 else "bad-request")


def detail_of(errors: list[dict[str, str]]) -> str:
    """The `detail` line of a problem with field errors: `field: message; field: message`."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def invalid_fields(errors: list[dict[str, str]]) -> Problem:
    """422 naming every field at fault."""
    return Problem(422, "Invalid request", detail_of(errors), errors=errors)


def invalid(field: str, message: str) -> Problem:
    return invalid_fields([{"field": field, "message": message}])


def not_found(kind: str, ident: str) -> Problem:
    return Problem(404, "Not Found", f"no {kind} with id {ident!r}")


def field_errors(exc: Any) -> list[dict[str, str]]:
    """[{field, message}] from a pydantic ValidationError or FastAPI's RequestValidationError.

    A RunSpec check raising FieldError names its own field; otherwise the location is the
    field, without the request part it came from (body, query, path, header)."""
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
