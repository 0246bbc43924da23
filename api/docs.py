"""/docs (Swagger UI) and /redoc served with no internet: FastAPI's own pages load their scripts
from a CDN and run an inline script, so offline they are blank, and they need a loose CSP.

Here the vendored files come from the `fastapi-offline` package (Swagger UI 5 and ReDoc
standalone builds) and the start-up code is a served .js file, so the pages run under a CSP with
no inline or remote script. Styles stay 'unsafe-inline': both UIs set style attributes at run time.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import not_found

router = APIRouter(include_in_schema=False)
VENDOR = Path(str(files("fastapi_offline") / "static"))
OURS = Path(__file__).parent / "ui"
ASSETS = {  # name -> file: an allow-list, never a path from the URL
    "swagger-ui-bundle.js": VENDOR / "swagger-ui-bundle.js",
    "swagger-ui.css": VENDOR / "swagger-ui.css",
    "redoc.standalone.js": VENDOR / "redoc.standalone.js",
    "favicon.png": VENDOR / "favicon.png",
    "swagger-init.js": OURS / "swagger-init.js",
    "redoc-init.js": OURS / "redoc-init.js",
}
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
            " font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none';"
            " base-uri 'none'; form-action 'none'")
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regdiff - {title}</title>
<link rel="icon" href="/docs/assets/favicon.png">{head}</head>
<body><div id="{mount}"></div>{scripts}</body></html>
"""


def _page(title: str, mount: str, scripts: list[str], head: str = "") -> HTMLResponse:
    tags = "".join(f'<script src="/docs/assets/{name}"></script>' for name in scripts)
    return HTMLResponse(PAGE.format(title=title, mount=mount, head=head, scripts=tags),
                        headers={"Content-Security-Policy": DOCS_CSP})


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return _page("Swagger UI", "swagger-ui", ["swagger-ui-bundle.js", "swagger-init.js"],
                 head='<link rel="stylesheet" href="/docs/assets/swagger-ui.css">')


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return _page("ReDoc", "redoc", ["redoc.standalone.js", "redoc-init.js"])


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise not_found("docs asset", name)
    return FileResponse(ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
