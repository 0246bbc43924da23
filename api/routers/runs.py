"""Runs: submit a RunSpec, follow it, cancel or delete it, fetch what it produced."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api import limits
from api.deps import OwnedRun, SessionDep, TenantDep
from api.errors import PROBLEM_RESPONSES, Problem, invalid
from api.images import GRID_MIN_WIDTH, ScaleQuery, scaled_png
from api.routers.datasets import check_builtin_available
from api.schemas import (
    CheckpointPublic,
    CheckpointsPublic,
    EventPublic,
    EventsPublic,
    MetricsPublic,
    RunPublic,
    RunsPublic,
    RunStatus,
)
from models import networks
from models.spec import RunSpec
from store import runs
from store.db import new_session
from store.settings import get_settings
from store.tables import Dataset, Run
from worker.celery_app import enqueue_train

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=PROBLEM_RESPONSES)
PNG = {200: {"content": {"image/png": {}}}}
MAX_EVENT_ID = 2**31 - 1  # run_events.id is a 32-bit INTEGER on PostgreSQL: a larger cursor cannot match


def check_dataset(session: SessionDep, tenant: str, spec: RunSpec) -> None:
    """Uploads are checked here (the spec alone cannot see the database), and built-ins read from
    REGDIFF_DATA_DIR are checked to be there, so a run on absent files fails now, not in the worker."""
    if not spec.dataset.startswith("upload:"):
        check_builtin_available(spec.dataset, get_settings())
        return
    info = session.scalar(
        select(Dataset.info).where(Dataset.id == spec.dataset.removeprefix("upload:"), Dataset.tenant == tenant)
    )
    if info is None:
        raise invalid("dataset", f"no uploaded dataset {spec.dataset!r}; upload one with POST /v1/datasets")
    try:
        networks.check_fits(spec.model.preset, info["image_size"])
    except ValueError as exc:
        raise invalid("model.preset", str(exc)) from None


def submit(session: SessionDep, tenant: str, spec: RunSpec, *, idempotency_key: str | None = None,
           sweep_id: str | None = None) -> tuple[Run, bool]:
    """Validate against the database, store the run, then wake a worker (after the commit)."""
    check_dataset(session, tenant, spec)
    settings = get_settings()
    limits.check_spec(session, settings, tenant, spec)
    limits.check_run_quota(session, settings, tenant, idempotency_key=idempotency_key)
    try:
        run, created = runs.create_run(session=session, tenant=tenant, spec=spec.to_json(),
                                       idempotency_key=idempotency_key, sweep_id=sweep_id)
    except runs.IdempotencyConflict as exc:
        raise Problem(422, "Idempotency-Key reused", f"this Idempotency-Key was used for run {exc} with another"
                      " request body", errors=[{"field": "Idempotency-Key", "message": "reused with another body"}])
    session.commit()
    if created:
        try:
            enqueue_train(run.id)
        except Exception:  # the run is stored; the reconciler enqueues it once the broker is back
            log.exception("could not enqueue run %s; the reconciler will retry", run.id)
    return run, created


@router.post("", status_code=201, response_model=RunPublic)
def create_run(
    spec: RunSpec,
    session: SessionDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> RunPublic:
    run, created = submit(session, tenant, spec, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return RunPublic.of(run)


@router.get("", response_model=RunsPublic)
def list_runs(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64, description="cursor: the last id of the previous page")] = None,
    status: RunStatus | None = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
) -> RunsPublic:
    rows, has_more = runs.list_runs(session=session, tenant=tenant, limit=limit, after=after, status=status,
                                    sweep_id=sweep_id)
    return RunsPublic(data=[RunPublic.of(r) for r in rows], has_more=has_more,
                      next_cursor=rows[-1].id if has_more else None)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run: OwnedRun) -> RunPublic:
    return RunPublic.of(run)


@router.post("/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run: OwnedRun, session: SessionDep) -> RunPublic:
    if run.status in runs.TERMINAL:
        raise Problem(409, "Conflict", f"run {run.id} is already {run.status}")
    runs.request_cancel(session=session, run=run)
    session.commit()
    session.refresh(run)
    return RunPublic.of(run)


@router.delete("/{run_id}", status_code=204)
def delete_run(run: OwnedRun, session: SessionDep) -> Response:
    """Removes the run with its events, checkpoints and samples; a worker on it stops at its next beat."""
    session.delete(run)
    session.commit()
    return Response(status_code=204)


@router.get("/{run_id}/samples.png", response_class=Response, responses=PNG)
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
            responses={200: {"content": {"text/event-stream": {}}}})
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
    with new_session() as session:
        rows, _ = runs.list_events(session=session, run_id=run_id, after=after, limit=500)
        return rows, session.scalar(select(Run.status).where(Run.id == run_id))


async def _event_stream(run_id: str, after: int, request: Request):
    """Poll the event table; end once the run is terminal and every event was sent."""
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
