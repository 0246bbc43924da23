"""The pages a problem's `type` points at: one short HTML page per kind, and a JSON index.

Public (no key, no rate-limit token): they describe the api, not a tenant's data."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.errors import phrase
from service.errors import KINDS, PROBLEMS_PATH, not_found

router = APIRouter(prefix=PROBLEMS_PATH, include_in_schema=False)  # pages about the api, not operations


@router.get("")
def list_problems() -> dict[str, list[dict[str, str | int]]]:
    """Every problem kind: `type`, `code`, `status`, `title` and what it means."""
    return {"data": [{"type": k.type, "code": k.code, "status": k.status, "title": phrase(k.status),
                      "meaning": k.meaning} for k in KINDS.values()]}


@router.get("/{code}", response_class=HTMLResponse)
def describe_problem(code: str) -> HTMLResponse:
    kind = KINDS.get(code)
    if kind is None:
        raise not_found("problem type", code)
    title = f"{kind.status} {phrase(kind.status)}: {kind.code}"
    return HTMLResponse(
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(kind.meaning)}</p>"
        f"<p>Problem bodies of this kind have <code>\"type\": \"{escape(kind.type)}\"</code> and"
        f" <code>\"code\": \"{escape(kind.code)}\"</code>; quote their <code>request_id</code> when"
        f" reporting one. <a href=\"{PROBLEMS_PATH}\">All problem types</a>.</p></html>"
    )
