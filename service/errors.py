"""The one error a service raises: a status, a title, a detail, and the fields at fault.

Services are called from HTTP routes today, but they do not import the web framework: the api
turns a `Problem` into an RFC 9457 problem+json response (api/errors.py). The status is a
classification the caller can act on (422 bad field, 404 absent, 409 wrong state, 429 try later),
which is why it is carried here rather than re-derived from a table of exception classes.
"""

from __future__ import annotations

from typing import Any

from models.spec import FieldError


class Problem(Exception):
    """Raise from a service or a route: becomes a problem+json response."""

    def __init__(self, status: int, title: str, detail: str = "", *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers


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
