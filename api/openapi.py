"""The OpenAPI document's rules, applied to every operation when `/openapi.json` is built.

A generated client (openapi-python-client, openapi-generator) needs the document to say what the
api really sends. The rules live here, not in each route, so a route added later follows them
without listing anything:

- operation ids are `<tag>_<name>` (`runs_create`): the route function's name without its tag's
  words. Every documented route has exactly one tag; a route without one fails at start.
- every error is the `Problem` schema under `application/problem+json`, with the statuses the
  middleware and the dependencies can produce: 400 (bad request, a Host the api does not answer
  to) and 500/503 everywhere; 401, 403 and 429 where a key is checked (the operation has
  `security`); 404 where the path names a resource; 422 where there is input to check; 413 where
  there is a body. A status only some routes raise (409) is declared on the route, bare
  (`responses={409: {}}`), and gets the same problem content here.
- binary content a route declares by media type (`image/png`, `application/zip`, ...) is a
  `format: binary` string; `text/event-stream` is a string.
- every 201 declares its `Location` header (the handlers send it).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from api.errors import PROBLEM, phrase
from service.errors import KINDS

SCHEMAS = "#/components/schemas/"
FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")  # FastAPI's default 422, replaced by Problem
JSON_TYPES = ("application/json", PROBLEM)
HEADERS = {
    401: {"WWW-Authenticate": "the scheme to answer with: Bearer"},
    429: {"Retry-After": "seconds to wait before retrying"},
    503: {"Retry-After": "seconds to wait before retrying (when the server knows)"},
}


class FieldError(BaseModel):
    """One field at fault: a dotted path into the request (`train.steps`, `file`, `after`)."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response of this api."""

    type: str = Field(description="`/problems/<code>`: a page that says what the problem means")
    code: str = Field(description="stable per kind of problem; branch on this (list: GET /problems)")
    title: str = Field(description="the HTTP reason phrase of `status`")
    status: int
    detail: str = Field(description="what went wrong, in prose")
    errors: list[FieldError] | None = Field(None, description="the fields at fault, with the allowed values")
    request_id: str | None = Field(None, description="also the X-Request-ID header; quote it when reporting")


# What a route declares itself: only what no rule can know.


def binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route whose 200 is a file of `media_type` (apply_rules adds its schema)."""
    return {200: {"description": description, "content": {media_type: {}}}}


CONFLICT: dict[int | str, dict[str, Any]] = {409: {}}
"""`responses=` of a route whose resource may be in the wrong state for it (apply_rules adds the problem)."""


def operation_id(route: APIRoute) -> str:
    """`<tag>_<name>`: `create_run` under the tag "runs" is `runs_create`, `sweep_report` under
    "sweeps" `sweeps_report`. Stable across path changes, and read like SDK method names."""
    if not route.include_in_schema:
        return route.name
    if len(route.tags) != 1:
        raise ValueError(f"{sorted(route.methods)} {route.path} ({route.name}) needs exactly one tag for its"
                         f" operation id, has {route.tags}")
    tag = str(route.tags[0]).replace("-", "_").lower()
    noise = {tag, tag.removesuffix("s")}
    words = [word for word in route.name.lower().split("_") if word not in noise]
    return f"{tag}_{'_'.join(words) or route.name}"


def install(app: FastAPI) -> None:
    """Serve the document with the rules applied (built once, on the first request for it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)  # FastAPI caches its raw document: not what we serve
            app.openapi_schema = None
            app.openapi_schema = apply_rules(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def apply_rules(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template=SCHEMAS + "{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                _apply_to_operation(operation)
    _drop_unused(document, FASTAPI_VALIDATION)
    return document


def error_statuses(operation: dict[str, Any]) -> set[int]:
    """What the middleware and the dependencies can answer on this operation, whatever the route does."""
    statuses = {400, 500, 503}
    parameters = operation.get("parameters") or []
    if operation.get("security"):
        statuses |= {401, 403, 429}
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if parameters or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses.add(413)
    return statuses


def _apply_to_operation(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
    for status in sorted(error_statuses(operation) | declared):
        current = responses.get(str(status))
        if current is None or _is_problem_or_default(current):
            responses[str(status)] = problem_response(status)
    for code, response in list(responses.items()):
        for media_type, content in (response.get("content") or {}).items():
            if not content.get("schema") and media_type not in JSON_TYPES:
                content["schema"] = {"type": "string"} if media_type.startswith("text/") else {
                    "type": "string", "format": "binary"}
        if code == "201":
            response.setdefault("headers", {})["Location"] = {
                "description": "the URL of the created resource", "schema": {"type": "string"}}
    operation["responses"] = dict(sorted(responses.items()))


def _is_problem_or_default(response: dict[str, Any]) -> bool:
    """A response the rules own: declared bare, as problem+json, or FastAPI's own 422 model. Any
    other content (readiness answers its 503 with its own JSON) is the route's and is kept."""
    content = response.get("content") or {}
    if PROBLEM in content or not any(media.get("schema") for media in content.values()):
        return True
    ref = (content.get("application/json") or {}).get("schema", {}).get("$ref", "")
    return ref.removeprefix(SCHEMAS) in FASTAPI_VALIDATION


def problem_response(status: int) -> dict[str, Any]:
    kinds = [kind for kind in KINDS.values() if kind.status == status]
    description = " ".join([phrase(status) + ".", *(f"`{kind.code}`: {kind.meaning}" for kind in kinds)])
    response: dict[str, Any] = {"description": description,
                                "content": {PROBLEM: {"schema": {"$ref": SCHEMAS + "Problem"}}}}
    if status in HEADERS:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in HEADERS[status].items()}
    return response


def _drop_unused(document: dict[str, Any], names: tuple[str, ...]) -> None:
    """Remove component schemas nothing refers to any more (FastAPI's validation-error models)."""
    schemas = document["components"]["schemas"]
    for name in names:
        rest = {k: v for k, v in schemas.items() if k != name}
        text = json.dumps({**document, "components": {**document["components"], "schemas": rest}})
        if f'"{SCHEMAS}{name}"' not in text:
            schemas.pop(name, None)

