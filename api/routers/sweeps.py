"""Sweeps: one run per point of a grid over the spec, and a report that puts them side by side.

`POST /v1/sweeps {"base": RunSpec, "vary": {"lambda": [0, 0.1, 1]}}`; service/sweeps.py expands
and checks the grid and stores it whole or not at all.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from api.deps.auth import TenantDep
from api.deps.metadata import OPENAPI as METADATA_QUERY
from api.deps.metadata import MetadataFilter
from api.deps.ownership import OwnedSweep
from api.deps.pagination import PageDep, next_cursor
from api.deps.session import SessionDep, SettingsDep
from api.openapi import binary
from api.schemas import SweepCreate, SweepPoint, SweepPublic, SweepReport, SweepReportRow, SweepsPublic
from service import reports
from service import sweeps as service
from store.tables import Sweep

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])


def _public(session, sweep: Sweep) -> SweepPublic:
    return SweepPublic.of(sweep, *service.members(session, sweep))


@router.post("", status_code=201, response_model=SweepPublic)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SweepPublic:
    sweep, created = service.submit(session, settings, tenant, body.base, body.vary, seeds=body.seeds,
                                    max_fcd_increase=body.max_fcd_increase, idempotency_key=idempotency_key,
                                    metadata=body.metadata)
    public = _public(session, sweep)
    response.headers["Location"] = public.urls["self"]
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return public


@router.get("", response_model=SweepsPublic, openapi_extra=METADATA_QUERY)
def list_sweeps(session: SessionDep, tenant: TenantDep, page: PageDep, metadata: MetadataFilter) -> SweepsPublic:
    rows, has_more = service.list_sweeps(session, tenant, limit=page.limit, after=page.after, metadata=metadata)
    return SweepsPublic(data=[_public(session, s) for s in rows], has_more=has_more,
                        next_cursor=next_cursor(rows, has_more))


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    return _public(session, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    """Cancels every unfinished run (queued ones at once, running ones at their next check)."""
    service.cancel(session, sweep)
    return _public(session, sweep)


@router.delete("/{sweep_id}", status_code=204)
def delete_sweep(sweep: OwnedSweep, session: SessionDep) -> Response:
    """Removes the sweep, its runs and what they stored; running ones stop at their worker's next beat."""
    service.delete(session, sweep)
    return Response(status_code=204)


@router.get("/{sweep_id}/report", response_model=SweepReport)
def sweep_report(sweep: OwnedSweep, session: SessionDep) -> SweepReport:
    """Per point (its seeds together): the penalty and FCD with 95% intervals, the change against the
    lambda=0 baseline and the verdict, and the best setting; per run: the varied values, lambda, FCD
    and confidence, the run's penalty on its samples and on real data, and the time. Numbers of
    unfinished runs are None."""
    _, status, _ = service.members(session, sweep)
    _, rows, ref, analysis = service.report(session, sweep)
    keys = list(sweep.vary or {})
    markdown = reports.points_markdown(analysis["points"], analysis["statement"], ref) + "\n" + reports.markdown(
        keys, rows, ref)
    return SweepReport(sweep_id=sweep.id, status=status, keys=keys, seeds=(sweep.options or {}).get("seeds"),
                       rows=[SweepReportRow.model_validate(r) for r in rows], reference=ref,
                       points=[SweepPoint.model_validate(p) for p in analysis["points"]], best=analysis["best"],
                       statement=analysis["statement"], pareto=analysis["pareto"],
                       max_fcd_increase=analysis["max_fcd_increase"], markdown=markdown)


@router.get("/{sweep_id}/report.png", response_class=Response,
            responses=binary("image/png", "the trade-off figure: penalty against FCD per point"))
def sweep_report_png(sweep: OwnedSweep, session: SessionDep) -> Response:
    png = service.report_png(session, sweep)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
