"""Runs: submit a RunSpec, follow it, cancel or delete it, fetch what it produced."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps.auth import TenantDep
from api.deps.metadata import OPENAPI as METADATA_QUERY
from api.deps.metadata import MetadataFilter
from api.deps.ownership import OwnedRun
from api.deps.pagination import PageDep, next_cursor
from api.deps.session import SessionDep, SettingsDep
from api.images import GRID_MIN_WIDTH, ScaleQuery, scaled_png
from api.openapi import CONFLICT, binary
from api.schemas import (
    CheckpointPublic,
    CheckpointsPublic,
    EventPublic,
    EventsPublic,
    MetricsPublic,
    RunComparison,
    RunCreate,
    RunPublic,
    RunsPublic,
    RunStatus,
    RunUpdate,
)
from service import compare
from service import runs as service
from service.errors import Problem
from store import runs
from store.db import new_session

router = APIRouter(prefix="/v1/runs", tags=["runs"])
SSE_RETRY_MS = 2000
MAX_EVENT_ID = 2**63 - 1  # run_events.id is 64-bit (BIGINT on PostgreSQL, the rowid on SQLite)


@router.post("", status_code=201, response_model=RunPublic)
def create_run(
    spec: RunCreate,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> RunPublic:
    webhook = spec.webhook.model_dump() if spec.webhook else None
    submitted = service.submit(session, settings, tenant, spec, idempotency_key=idempotency_key,
                               metadata=spec.metadata, webhook=webhook)
    public = RunPublic.of(submitted.run, submitted.webhook)
    response.headers["Location"] = public.urls.self
    if not submitted.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return public


@router.get("", response_model=RunsPublic, openapi_extra=METADATA_QUERY)
def list_runs(
    session: SessionDep,
    tenant: TenantDep,
    page: PageDep,
    metadata: MetadataFilter,
    status: RunStatus | None = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
) -> RunsPublic:
    rows, has_more = service.list_runs(session, tenant, limit=page.limit, after=page.after, status=status,
                                       sweep_id=sweep_id, metadata=metadata)
    return RunsPublic(data=[RunPublic.of(r) for r in rows], has_more=has_more,
                      next_cursor=next_cursor(rows, has_more))


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run: OwnedRun) -> RunPublic:
    return RunPublic.of(run)


@router.patch("/{run_id}", response_model=RunPublic)
def update_run(run: OwnedRun, body: RunUpdate, session: SessionDep) -> RunPublic:
    """Change the run's metadata as a JSON merge patch: a key set to null is removed, others are set."""
    return RunPublic.of(service.update(session, run, metadata=body.metadata))


@router.post("/{run_id}/cancel", response_model=RunPublic, responses=CONFLICT)
def cancel_run(run: OwnedRun, session: SessionDep) -> RunPublic:
    return RunPublic.of(service.cancel(session, run))


@router.delete("/{run_id}", status_code=204)
def delete_run(run: OwnedRun, session: SessionDep) -> Response:
    """Removes the run with its events, checkpoints and samples; a worker on it stops at its next beat."""
    service.delete(session, run)
    return Response(status_code=204)


@router.get("/{run_id}/compare", response_model=RunComparison, responses=CONFLICT)
def compare_run(
    run: OwnedRun,
    session: SessionDep,
    tenant: TenantDep,
    baseline: Annotated[str, Query(max_length=64, description="the run to compare against, e.g. its lambda=0 twin")],
) -> RunComparison:
    """Both runs' penalties and FCDs with 95% intervals (seed variance included), and the verdict."""
    return RunComparison.model_validate(compare.compare(session, tenant, run, baseline))


@router.get("/{run_id}/samples.png", response_class=Response,
            responses=binary("image/png", "the preview grid made at the end of the run"))
def run_samples_png(run: OwnedRun, session: SessionDep, scale: ScaleQuery = None) -> Response:
    job = runs.preview(session=session, run_id=run.id)
    if job is None or job.grid_png is None:
        raise Problem(404, "Not Found", f"run {run.id} has no samples yet (status {run.status})")
    return Response(scaled_png(job.grid_png, scale, min_width=GRID_MIN_WIDTH), media_type="image/png")


@router.get("/{run_id}/metrics", response_model=MetricsPublic)
def run_metrics(run: OwnedRun, session: SessionDep) -> MetricsPublic:
    return MetricsPublic(series=runs.metric_series(session=session, run_id=run.id))


@router.get("/{run_id}/checkpoints", response_model=CheckpointsPublic)
def run_checkpoints(run: OwnedRun, session: SessionDep) -> CheckpointsPublic:
    return CheckpointsPublic(data=[CheckpointPublic.of(c) for c in runs.list_checkpoints(session=session,
                                                                                         run_id=run.id)])


@router.get("/{run_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "JSON pages, or an SSE stream (Accept: text/event-stream)"}})
async def run_events(
    run: OwnedRun,
    request: Request,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="the last event id already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
):
    """JSON pages, or Server-Sent Events when the client accepts text/event-stream (resumable)."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        with new_session() as session:
            rows, has_more = runs.list_events(session=session, run_id=run.id, after=after, limit=limit)
        return EventsPublic(data=[EventPublic.of(e) for e in rows], has_more=has_more)
    start = last_event_id if last_event_id is not None else after
    return StreamingResponse(_event_stream(run.id, start, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _events_and_status(run_id: str, after: int) -> tuple[list, str | None]:
    """One snapshot: the status is read first, in the same transaction, so a terminal status
    comes with every event committed before it (a run's final status event is written in the
    transaction that sets the status): the stream never ends before sending it."""
    with new_session() as session, session.begin():
        status = runs.status_of(session=session, run_id=run_id)
        rows, _ = runs.list_events(session=session, run_id=run_id, after=after, limit=500)
        return rows, status


async def _event_stream(run_id: str, after: int, request: Request):
    """Poll the event table; end once the run is terminal and every event was sent."""
    yield f"retry: {SSE_RETRY_MS}\n\n"  # how long a client waits before it reconnects with Last-Event-ID
    idle = 0.0
    while not await request.is_disconnected():
        rows, status = await asyncio.to_thread(_events_and_status, run_id, after)
        for event in rows:
            after = event.id
            yield f"id: {event.id}\nevent: {event.type}\ndata: {EventPublic.of(event).model_dump_json()}\n\n"
        if not rows and (status is None or status in runs.TERMINAL):
            yield "event: end\ndata: {}\n\n"
            return
        idle = 0.0 if rows else idle + 0.5
        if idle >= 15:  # keep-alive comment so proxies keep the stream open
            idle = 0.0
            yield ": ping\n\n"
        await asyncio.sleep(0.5)
