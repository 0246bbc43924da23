"""The FastAPI app: one router per resource, problem+json errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

from api import docs, errors, metrics, openapi
from api.deps.auth import CLIENT_HEADER, DEFAULT_TENANT
from api.deps.rate_limit import rate_limited
from api.rate_limiter import RATE_LIMIT_HEADERS, RateLimiter
from api.request_id import RequestIdMiddleware, log_with_request_ids
from api.routers import catalog, checkpoints, datasets, health, problems, runs, samples, sweeps, ui, webhooks
from api.security import (
    BodyLimitMiddleware,
    HostAllowlistMiddleware,
    NulInUrlMiddleware,
    SecurityHeadersMiddleware,
)
from store.settings import Settings, get_settings, is_loopback

log = logging.getLogger(__name__)
UPLOAD_ROUTES = {("POST", "/v1/datasets")}
MULTIPART_MARGIN = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()  # refuses unsafe values (e.g. auth off on a public address)
    app = FastAPI(
        title="regdiff",
        version="1",
        description="Train small image diffusion models with an extra loss on the denoised image.",
        lifespan=_lifespan,
        docs_url=None,  # served offline by api/docs.py
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,  # runs_create, not create_run_v1_runs_post
    )
    errors.install(app)
    openapi.install(app)
    log_with_request_ids(logging.getLogger("api"))
    app.include_router(health.router)
    app.include_router(problems.router)
    app.include_router(docs.router)
    app.include_router(ui.router)
    # Every /v1 route: the caller's key is checked (when keys are on) and spends a rate-limit token.
    for module in (catalog, runs, samples, checkpoints, datasets, sweeps, webhooks):
        app.include_router(module.router, dependencies=[Depends(rate_limited)])
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst,
                                         settings.resolved_rate_limit_storage)
    app.state.upload_slots = threading.BoundedSemaphore(settings.max_concurrent_uploads)
    metrics.install(app, settings)  # innermost middleware: times the app itself
    _install_middleware(app, settings)
    return app


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost last: request ids and security headers wrap everything (413s and CORS answers included)."""

    def body_limit(scope: Scope) -> int:
        upload = (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES
        # an upload's file may be max_upload_bytes; its multipart framing and form fields come on top
        return settings.max_upload_bytes + MULTIPART_MARGIN if upload else settings.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(NulInUrlMiddleware)
    if settings.cors_origins:  # off unless origins are listed; bearer keys, never cookies
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", CLIENT_HEADER],
            expose_headers=["Retry-After", "Idempotent-Replayed", *RATE_LIMIT_HEADERS], max_age=600,
        )
    app.add_middleware(HostAllowlistMiddleware, settings=settings)  # before CORS and routing: DNS rebinding
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestIdMiddleware)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    announce_auth(app.state.settings)
    yield


def announce_auth(settings: Settings) -> None:
    """Say at start whether keys are required; running without them is never silent."""
    if not settings.auth_enabled:
        if settings.auth == "off" and not is_loopback(settings.host):
            log.warning("INSECURE: authentication is OFF on %s (REGDIFF_AUTH=off,"
                        " REGDIFF_ALLOW_INSECURE=true): anyone who reaches this address acts as tenant %r",
                        settings.host, DEFAULT_TENANT)
        else:
            log.warning("authentication is OFF (REGDIFF_AUTH=%s, REGDIFF_HOST=%s): requests without an"
                        " API key act as tenant %r; set REGDIFF_AUTH=required to require keys",
                        settings.auth, settings.host, DEFAULT_TENANT)
        return
    try:
        from store import keys
        from store.db import new_session

        with new_session() as session:
            live = keys.count_live_keys(session=session)
    except Exception:  # an unmigrated database is reported by /readyz, not here
        return
    if live == 0:
        log.warning("authentication is on but no API key exists: every /v1 request will be a 401;"
                    " create one with `regdiff-admin keys create --tenant NAME`")


app = create_app()
