"""The dashboard and the API docs in a real browser (headless Chromium), keys on and off.

Every page is loaded with the network outside the service cut off (page.route), so a script or
style from a CDN would fail the test, and with console errors collected."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page

from tests.ui.conftest import Deployment

pytestmark = pytest.mark.service
SCREENSHOT_ENV = "REGDIFF_SCREENSHOT_TO"  # set to a path to keep the run page's screenshot (the README's)
TIMEOUT_MS = 60_000
# ReDoc's sidebar always asks cdn.redoc.ly for its own logo; the docs CSP refuses it (nothing leaves)
# and Chromium logs the refusal: the one console error expected, on /redoc only.
REDOC_LOGO = "cdn.redoc.ly/redoc/logo-mini.svg"


class Visit:
    """A browser tab that records console errors and any request that leaves the service."""

    def __init__(self, page: Page, origin: str):
        self.page, self.errors, self.outside, self.urls = page, [], [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def offline(route):
            self.urls.append(route.request.url)
            if urlsplit(route.request.url).netloc == urlsplit(origin).netloc:
                return route.continue_()
            self.outside.append(route.request.url)
            return route.abort()

        page.route("**/*", offline)


@pytest.fixture
def visit(browser: Browser, deployment: Deployment) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        yield Visit(context.new_page(), deployment.url)
    finally:
        context.close()


def enter_key(page: Page, deployment: Deployment) -> None:
    if deployment.key:
        page.fill("#key-input", deployment.key)
        page.click("#key-form button[type=submit]")


def test_runs_list_and_run_page(visit: Visit, deployment: Deployment, tmp_path: Path) -> None:
    page, run_id = visit.page, deployment.run["id"]
    page.goto(f"{deployment.url}/ui")
    if deployment.key:  # without the key the api's 401 is shown, and no run
        page.wait_for_selector("text=enter an API key", timeout=TIMEOUT_MS)
        assert page.locator(f'a[href="#/runs/{run_id}"]').count() == 0
        assert all("401" in e for e in visit.errors)  # Chromium logs each refused request
        visit.errors.clear()
    enter_key(page, deployment)
    page.wait_for_selector(f'a[href="#/runs/{run_id}"]', timeout=TIMEOUT_MS)
    assert "succeeded" in page.inner_text("#view")
    page.click(f'a[href="#/runs/{run_id}"]')  # re-queried: the list is redrawn every 2 s

    # the loss chart: one polyline per series, a point per logged step (5, 10, 15, 20; the last may be
    # recorded twice: the final flush repeats it), at distinct heights
    line = page.wait_for_selector('polyline[data-series="diffusion_loss"]', timeout=TIMEOUT_MS)
    points = [tuple(map(float, p.split(","))) for p in line.get_attribute("points").split()]
    assert len({x for x, _ in points}) == 4 and len({y for _, y in points}) >= 2
    assert page.locator('polyline[data-series="penalty_raw"]').count() == 1
    assert page.locator('polyline[data-series="penalty_weighted"]').count() == 1

    # the preview grid, fetched with the key and enlarged: 4 digits of 8x8 are 22 px at 1:1
    # decode() resolves once the image is loaded (no wait_for_function: its polling evals a string,
    # which the page's CSP refuses, as it should)
    page.wait_for_selector("#grid", timeout=TIMEOUT_MS)
    assert page.eval_on_selector("#grid", "img => img.decode().then(() => img.naturalWidth)") >= 256
    assert page.eval_on_selector("#grid", "img => img.src").startswith("blob:")
    assert page.locator("#cancel").is_disabled()  # a finished run cannot be cancelled
    page.wait_for_selector("button:has-text('download')", timeout=TIMEOUT_MS)  # its checkpoints
    if deployment.key:  # sent as a header, never in a URL
        assert visit.urls and not [u for u in visit.urls if deployment.key in u]

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep and deployment.key is None:
        shutil.copy(shot, keep)
    assert visit.errors == [] and visit.outside == []


def test_docs_render_offline(visit: Visit, deployment: Deployment) -> None:
    page = visit.page
    page.goto(f"{deployment.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS)
    assert "regdiff" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/runs/{run_id}']", timeout=TIMEOUT_MS)
    assert visit.errors == []

    page.goto(f"{deployment.url}/redoc")
    page.wait_for_selector("h1:has-text('regdiff')", timeout=TIMEOUT_MS)
    assert [e for e in visit.errors if REDOC_LOGO not in e] == []
    assert visit.outside == []
