"""The dashboard's rendering of shapes the live tests cannot reach cheaply: a sweep page with a
recommended setting, and an evaluation holding confidence intervals (fields other work adds).

The page's own files come from api/ui; the /v1 answers are canned JSON in the api's shapes,
served through Playwright's router (a front-end test: the live service is in test_dashboard)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Route

from models.images import grid_png

UI = Path(__file__).resolve().parents[2] / "api" / "ui"
ORIGIN = "http://regdiff.test"
PNG = grid_png(np.zeros((1, 8, 8, 1), dtype=np.uint8))
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

RUN = {
    "id": "run_a", "object": "run", "status": "succeeded", "sweep_id": "swp_1", "step": 10, "total_steps": 10,
    "progress": 1.0, "metrics": {}, "error": None, "attempts": 1, "created_at": "2026-01-01T00:00:00Z",
    "started_at": None, "finished_at": None,
    "spec": {"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "model": {"preset": "unet-xs"}},
    "evaluation": {"fcd": {"value": 12.5, "ci": [11.0, 14.25]}, "confidence": 0.875,
                   "penalty": {"samples": {"mean": 0.21, "ci": {"lo": 0.2, "hi": 0.22}}}},
    "urls": {"self": "/v1/runs/run_a", "cancel": "/v1/runs/run_a/cancel", "events": "/v1/runs/run_a/events",
             "samples_png": "/v1/runs/run_a/samples.png"},
}
SWEEP = {"id": "swp_1", "object": "sweep", "status": "succeeded", "base": {}, "vary": {"lambda": [0, 0.1]},
         "points": 2, "counts": {"succeeded": 2}, "runs": [], "created_at": "2026-01-01T00:00:00Z",
         "urls": {"report": "/v1/sweeps/swp_1/report", "report_png": "/v1/sweeps/swp_1/report.png"}}
ROW = {"status": "succeeded", "fcd": 12.5, "confidence": 0.9, "classifier_score": None, "penalty_samples": 0.2,
       "penalty_real": 0.19, "n_samples": 64, "seconds": 3.5, "error": None}
REPORT = {"object": "sweep_report", "sweep_id": "swp_1", "status": "succeeded", "keys": ["lambda"],
          "rows": [{**ROW, "run_id": "run_0", "values": {"lambda": 0}, "lambda": 0},
                   {**ROW, "run_id": "run_a", "values": {"lambda": 0.1}, "lambda": 0.1}],
          "reference": {"penalty": 0.19}, "markdown": "",
          "best": {"run_id": "run_a", "values": {"lambda": 0.1}}}
API = {
    "/v1/runs/run_a": RUN, "/v1/runs/run_a/metrics": {"series": {"diffusion_loss": [[5, 1.0], [10, 0.5]],
                                                                 "val_loss": [[10, 0.6]]}},
    "/v1/runs/run_a/checkpoints": {"data": []}, "/v1/sweeps/swp_1": SWEEP, "/v1/sweeps/swp_1/report": REPORT,
}


def serve(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?")[0]
    if path in ("/ui", "/ui/app.js", "/ui/style.css"):
        file = UI / ("index.html" if path == "/ui" else path.removeprefix("/ui/"))
        return route.fulfill(body=file.read_bytes(), content_type=TYPES[file.suffix])
    if path.endswith(".png"):
        return route.fulfill(body=PNG, content_type="image/png")
    if path in API:
        return route.fulfill(body=json.dumps(API[path]), content_type="application/json")
    return route.fulfill(status=404, body="{}", content_type="application/problem+json")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.route("**/*", serve)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == []


def test_evaluation_shows_confidence_intervals(page: Page) -> None:
    page.goto(f"{ORIGIN}/ui#/runs/run_a")
    page.wait_for_selector("#evaluation tbody tr")
    rows = dict(tuple(r.split("\t")) for r in page.inner_text("#evaluation tbody").splitlines())
    assert rows == {"fcd": "12.50 [11, 14.25]", "confidence": "0.8750",
                    "penalty.samples": "0.2100 [0.2000, 0.2200]"}
    assert page.locator('polyline[data-series="val_loss"]').count() == 1  # drawn with the diffusion loss


def test_sweep_page_shows_report_figure_and_recommendation(page: Page) -> None:
    page.goto(f"{ORIGIN}/ui#/sweeps/swp_1")
    page.wait_for_selector("#best")
    assert page.inner_text("#best") == "recommended: run_id run_a, values.lambda 0.1000"
    assert page.locator("a[href='#/runs/run_0']").count() == 1 and page.locator("a[href='#/runs/run_a']").count() == 1
    page.wait_for_selector("#report-figure")
    assert page.eval_on_selector("#report-figure", "img => img.decode().then(() => img.naturalWidth)") > 0
