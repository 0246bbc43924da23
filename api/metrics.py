"""Prometheus `/metrics`: HTTP traffic per route template, and the service's state read from the
database at scrape time (runs by status, queue depth, sample jobs, training pace, heartbeat age).

The HTTP series live in this process's memory: with several uvicorn workers each serves its own,
so scrape each (or sum them). The database series are the same from every api process. Workers
export their own gauges on their own port (worker/metrics.py).

Who may read it: anyone with a valid API key; without a key, loopback clients only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps.auth import PrincipalDep
from service.errors import Problem
from store import monitoring
from store.db import new_session
from store.settings import Settings, is_loopback

log = logging.getLogger(__name__)
router = APIRouter()
RUN_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
SAMPLE_STATUSES = ("queued", "running", "succeeded", "failed")
UNMATCHED = "unmatched"  # one label for every path no route knows (404s): raw paths would explode the series


class HttpMetricsMiddleware:
    """Counts requests and times them per (method, route template, status)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # the router writes the matched route into this same scope dict
            route = getattr(scope.get("route"), "path_format", UNMATCHED)
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


class DatabaseCollector(Collector):
    """Gauges computed from the database on each scrape, through store.monitoring."""

    def __init__(self, lease_seconds: float):
        self.lease_seconds = lease_seconds

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("regdiff_database_up", "1 when the scrape could read the database")
        try:
            with new_session() as session:
                runs = monitoring.runs_by_status(session=session)
                samples = monitoring.sample_jobs_by_status(session=session)
                paces = monitoring.running_throughput(session=session)
                expiry = monitoring.oldest_running_lease_expiry(session=session)
        except Exception:  # a scrape reports the outage instead of failing
            log.exception("metrics: could not read the database")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _by_status("regdiff_runs", "runs by status", runs, RUN_STATUSES)
        yield GaugeMetricFamily("regdiff_queue_depth", "queued runs waiting for a worker",
                                value=runs.get("queued", 0))
        yield _by_status("regdiff_sample_jobs", "sample jobs by status", samples, SAMPLE_STATUSES)
        yield GaugeMetricFamily("regdiff_training_steps_per_second",
                                "training steps per second, summed over running runs",
                                value=sum(p.steps_per_second for p in paces))
        yield GaugeMetricFamily("regdiff_training_images_per_second",
                                "training images per second (steps x batch size), summed over running runs",
                                value=sum(p.images_per_second for p in paces))
        age = 0.0 if expiry is None else (datetime.now(UTC) - expiry).total_seconds() + self.lease_seconds
        yield GaugeMetricFamily("regdiff_oldest_heartbeat_age_seconds",
                                "seconds since the stalest running run's last heartbeat (0 when none runs)",
                                value=max(0.0, age))


def _by_status(name: str, documentation: str, counts: dict[str, int], known: tuple[str, ...]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status in dict.fromkeys([*known, *counts]):  # every known status, 0 included, then any other
        family.add_metric([status], counts.get(status, 0))
    return family


def install(app: FastAPI, settings: Settings) -> None:
    """A registry of this app's own (tests build several apps in one process), its middleware and route."""
    registry = CollectorRegistry()
    requests = Counter("regdiff_http_requests", "HTTP requests by method, route template and status",
                       ["method", "route", "status"], registry=registry)
    latency = Histogram("regdiff_http_request_duration_seconds", "HTTP request latency by route template",
                        ["method", "route"], registry=registry)
    registry.register(DatabaseCollector(settings.lease_seconds))
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetricsMiddleware, requests=requests, latency=latency)
    app.include_router(router)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, principal: PrincipalDep) -> Response:
    """Prometheus text format. A present key is always checked (PrincipalDep); no key: loopback only."""
    client = request.client.host if request.client else ""
    if principal.key_id is None and not is_loopback(client):
        raise Problem(403, "Forbidden", "/metrics answers loopback clients, or any client with an API key:"
                      " send 'Authorization: Bearer <key>'", code="forbidden")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
