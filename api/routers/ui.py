"""The dashboard: static files only (api/ui/). The page reads everything through the /v1 api with
the user's key, so these routes need none and serve nothing tenant-specific."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import not_found

router = APIRouter(include_in_schema=False)
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # an allow-list, never a path from the URL
# Scripts and styles from this origin only, no inline code; images also from blob: (fetched with the key).
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self';"
          " frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@router.get("/ui")
@router.get("/ui/")
def dashboard() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": UI_CSP})


@router.get("/ui/{name}")
def dashboard_file(name: str) -> FileResponse:
    if name not in FILES:
        raise not_found("dashboard file", name)
    return FileResponse(UI_DIR / name, media_type=FILES[name])
