"""Sweeps: one run per point of a grid over the spec, and a report that puts them side by side.

`POST /v1/sweeps {"base": RunSpec, "vary": {"lambda": [0, 0.1, 1]}}`: the keys of `vary` are
dotted paths into the spec JSON (`lambda`, `estimator.kind`, `reg_schedule.t_max`,
`regularizer.0.weight`, ...); several keys make a grid. Every value, then every point, is
validated as a RunSpec before anything is stored (422 naming `base.<field>` or `vary.<key>`),
and the sweep with all its runs is stored in one transaction: accepted whole or not at all.
The sweep's status is derived from its runs (store/sweeps.py says how).
"""

from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import ValidationError

from api import limits, reports
from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import PROBLEM_RESPONSES, Problem, _field_errors, invalid, not_found
from api.routers.runs import check_dataset
from api.schemas import SweepCreate, SweepPublic, SweepReport, SweepReportRow, SweepsPublic
from models.spec import RunSpec
from store import runs
from store import sweeps as stored
from store.settings import Settings
from store.tables import Run, Sweep, as_utc
from worker.celery_app import enqueue_train

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=PROBLEM_RESPONSES)
PNG = {200: {"content": {"image/png": {}}}}
EXAMPLES = "e.g. lambda, estimator.kind, reg_schedule.t_max, regularizer.0.weight"


def owned_sweep(sweep_id: Annotated[str, Path(max_length=64)], session: SessionDep, tenant: TenantDep) -> Sweep:
    """Another tenant's sweep answers 404, exactly like a missing one."""
    sweep = stored.get_sweep(session=session, tenant=tenant, sweep_id=sweep_id)
    if sweep is None:
        raise not_found("sweep", sweep_id)
    return sweep


OwnedSweep = Annotated[Sweep, Depends(owned_sweep)]


# ---- validation: every value, then every point, as a RunSpec -----------------------------------


def _why(exc: ValidationError) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in _field_errors(exc))


def _problem(errors: list[dict[str, str]]) -> Problem:
    return Problem(422, "Invalid request", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def expand(body: SweepCreate, max_points: int) -> tuple[dict[str, Any], dict[str, list[Any]], list[RunSpec]]:
    """(canonical base, vary with values as the specs hold them, one RunSpec per grid point)."""
    try:
        base = RunSpec.model_validate(body.base).to_json()
    except ValidationError as exc:
        raise _problem([{"field": f"base.{e['field']}", "message": e["message"]} for e in _field_errors(exc)]) from None
    if not body.vary:
        raise invalid("vary", f"give at least one dotted path into the spec and its values ({EXAMPLES})")
    points = 1
    for values in body.vary.values():
        points *= len(values)
    if points > max_points:
        sizes = " x ".join(str(len(v)) for v in body.vary.values())
        raise invalid("vary", f"{sizes} = {points} runs; at most {max_points} per sweep (REGDIFF_MAX_SWEEP_POINTS)")

    errors: list[dict[str, str]] = []
    for key, values in body.vary.items():
        field = f"vary.{key}"
        overlap = next((k for k in body.vary if k != key and (k.startswith(key + ".") or key.startswith(k + "."))),
                       None)
        if not stored.has_path(base, key):
            errors.append({"field": field, "message": f"no field {key!r} in the spec; use a dotted path to an"
                           f" existing field ({EXAMPLES})"})
        elif overlap is not None:
            errors.append({"field": field, "message": f"overlaps vary.{overlap}; vary a field or its parent, not both"})
        elif not values:
            errors.append({"field": field, "message": "give at least one value"})
    if errors:
        raise _problem(errors)

    # Every point; a failing point is blamed on the values that fail with the base alone, else on
    # the combination (values may only make sense together: dataset with model.preset).
    keys = list(body.vary)
    alone: dict[tuple[str, int], str | None] = {}

    def fails_alone(key: str, i: int) -> str | None:
        if (key, i) not in alone:
            try:
                RunSpec.model_validate(stored.set_path(base, key, body.vary[key][i]))
                alone[key, i] = None
            except ValidationError as exc:
                alone[key, i] = _why(exc)
        return alone[key, i]

    found: dict[tuple[str, str], None] = {}  # ordered and without repeats
    specs: list[RunSpec] = []
    normalised: dict[str, dict[int, Any]] = {key: {} for key in keys}
    for combo in itertools.product(*(range(len(body.vary[k])) for k in keys)):
        spec_json = base
        for key, i in zip(keys, combo):
            spec_json = stored.set_path(spec_json, key, body.vary[key][i])
        try:
            spec = RunSpec.model_validate(spec_json)
        except ValidationError as exc:
            blamed = [(f"vary.{k}", f"value {i} ({body.vary[k][i]!r}): {why}") for k, i in zip(keys, combo)
                      if (why := fails_alone(k, i)) is not None]
            point = {k: body.vary[k][i] for k, i in zip(keys, combo)}
            found.update(dict.fromkeys(blamed or [("vary", f"the point {reports.label(point)}: {_why(exc)}")]))
            continue
        specs.append(spec)
        for key, i in zip(keys, combo):
            normalised[key].setdefault(i, stored.get_path(spec.to_json(), key))
    errors = [{"field": f, "message": m} for f, m in found]
    if errors:
        raise _problem(errors)

    vary: dict[str, list[Any]] = {}
    for key in keys:  # values as the specs hold them (0 -> 0.0), so each run's point reads back from its spec
        vary[key] = [normalised[key][i] for i in range(len(body.vary[key]))]
        for i, value in enumerate(vary[key]):
            if value in vary[key][:i]:
                errors.append({"field": f"vary.{key}", "message": f"value {i} ({body.vary[key][i]!r}) is given twice"})
    if errors:
        raise _problem(errors)
    return base, vary, specs


def _in_sweep(problem: Problem, vary: dict[str, list[Any]]) -> Problem:
    """A run-level problem (field `dataset`) renamed to where the sweep request set it."""

    def where(field: str) -> str:
        varied = any(field == k or field.startswith(k + ".") or k.startswith(field + ".") for k in vary)
        return f"vary.{field}" if varied else f"base.{field}"

    errors = [{**e, "field": where(e["field"])} for e in problem.errors or []]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or problem.detail
    return Problem(problem.status, problem.title, detail, errors=errors or None, headers=problem.headers,
                   code=problem.code)


def _check_against_server(session, settings: Settings, tenant: str, specs: list[RunSpec],
                          vary: dict[str, list[Any]], replay_key: str | None) -> None:
    """What the spec alone cannot see (uploads, data files, server limits, the queue quota), for every point."""
    try:
        for spec in specs:
            check_dataset(session, tenant, spec)  # the checks of POST /v1/runs (runs.submit), per point
            limits.check_spec(session, settings, tenant, spec)
    except Problem as problem:
        raise _in_sweep(problem, vary) from None
    # the whole sweep against the quota: accepted whole or refused whole
    limits.check_run_quota(session, settings, tenant, new_runs=len(specs), idempotency_key=replay_key)


# ---- routes --------------------------------------------------------------------------------------


def _public(session, sweep: Sweep) -> SweepPublic:
    members = stored.sweep_runs(session=session, sweep=sweep)
    return SweepPublic.of(sweep, members, stored.derive_status(r.status for r in members),
                          [stored.point_of(r, sweep.vary or {}) for r in members])


@router.post("", status_code=201, response_model=SweepPublic)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SweepPublic:
    base, vary, specs = expand(body, settings.max_sweep_points)
    replay_key = f"sweep:{idempotency_key}:0" if idempotency_key is not None else None
    _check_against_server(session, settings, tenant, specs, vary, replay_key)
    try:
        sweep, created = stored.create_sweep(session=session, tenant=tenant, base=base, vary=vary,
                                             specs=[s.to_json() for s in specs], idempotency_key=idempotency_key)
    except runs.IdempotencyConflict as exc:
        raise Problem(422, "Idempotency-Key reused", f"this Idempotency-Key was used for {exc} with another"
                      " request body", errors=[{"field": "Idempotency-Key", "message": "reused with another body"}],
                      code="idempotency-key-reused")
    session.commit()
    if created:
        for run in stored.sweep_runs(session=session, sweep=sweep):
            try:
                enqueue_train(run.id)
            except Exception:  # stored; the reconciler enqueues it once the broker is back
                log.exception("could not enqueue run %s of sweep %s; the reconciler will retry", run.id, sweep.id)
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return _public(session, sweep)


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64, description="cursor: the last id of the previous page")] = None,
) -> SweepsPublic:
    rows, has_more = stored.list_sweeps(session=session, tenant=tenant, limit=limit, after=after)
    return SweepsPublic(data=[_public(session, s) for s in rows], has_more=has_more,
                        next_cursor=rows[-1].id if has_more else None)


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    return _public(session, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    """Cancels every unfinished run (queued ones at once, running ones at their next check)."""
    for run in stored.sweep_runs(session=session, sweep=sweep):
        if run.status in ("queued", "running"):
            runs.request_cancel(session=session, run=run)
    session.commit()
    session.expire_all()
    return _public(session, sweep)


def _seconds(run: Run) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return (as_utc(run.finished_at) - as_utc(run.started_at)).total_seconds()


def _rows(session, sweep: Sweep) -> tuple[list[Run], list[dict[str, Any]], dict[str, float | None]]:
    members = stored.sweep_runs(session=session, sweep=sweep)
    rows = [reports.row(run_id=r.id, status=r.status, values=stored.point_of(r, sweep.vary or {}), spec=r.spec,
                        evaluation=r.evaluation, seconds=_seconds(r), error=r.error) for r in members]
    return members, rows, reports.reference([r.evaluation for r in members])


@router.get("/{sweep_id}/report", response_model=SweepReport)
def sweep_report(sweep: OwnedSweep, session: SessionDep) -> SweepReport:
    """Per run: the varied values, lambda, FCD and confidence, the run's penalty on its samples and
    on real data, and the time; rows of unfinished runs have None where numbers are still missing."""
    members, rows, ref = _rows(session, sweep)
    keys = list(sweep.vary or {})
    return SweepReport(sweep_id=sweep.id, status=stored.derive_status(r.status for r in members), keys=keys,
                       rows=[SweepReportRow.model_validate(r) for r in rows], reference=ref,
                       markdown=reports.markdown(keys, rows, ref))


@router.get("/{sweep_id}/report.png", response_class=Response, responses=PNG)
def sweep_report_png(sweep: OwnedSweep, session: SessionDep) -> Response:
    members, rows, ref = _rows(session, sweep)
    grids = []
    for run in members:
        job = runs.preview(session=session, run_id=run.id)
        grids.append(job.grid_png if job is not None else None)
    title = f"sweep {sweep.id} on {(sweep.base or {}).get('dataset', '?')}"
    png = reports.figure_png(title, rows, grids, ref)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
