"""Sweeps: one run per point of a grid over the spec, accepted whole or not at all.

`{"base": RunSpec, "vary": {"lambda": [0, 0.1, 1]}}`: the keys of `vary` are dotted paths into
the spec JSON (`lambda`, `estimator.kind`, `reg_schedule.t_max`, `regularizer.0.weight`, ...);
several keys make a grid. Every value, then every point, is validated as a RunSpec before
anything is stored (422 naming `base.<field>` or `vary.<key>`), and the sweep with all its runs
is stored in one transaction. The sweep's status is derived from its runs (store/sweeps.py says how).
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from models.spec import RunSpec
from service import limits, reports, sweep_verdicts
from service import metadata as labels
from service.errors import Problem, detail_of, field_errors, invalid, invalid_fields
from service.lookup import found, page
from service.runs import check_against_server, enqueue_all, idempotency_reused
from store import runs
from store import sweeps as stored
from store.settings import Settings
from store.tables import Run, Sweep, as_utc

EXAMPLES = "e.g. lambda, estimator.kind, reg_schedule.t_max, regularizer.0.weight"


def _why(exc: ValidationError) -> str:
    return detail_of(field_errors(exc))


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def needs_baseline(base: dict[str, Any], given: dict[str, list[Any]]) -> bool:
    """True when no point of the grid is a lambda = 0 run: the sweep then adds one per seed."""
    if "lambda" in given:
        return not any(_is_zero(v) for v in given["lambda"])
    return not _is_zero(base.get("lambda"))


def check_seeds(seeds: list[int] | None, given: dict[str, list[Any]], max_seeds: int) -> None:
    """`seeds`: at least one, no repeats, at most REGDIFF_MAX_SWEEP_SEEDS, not also varied as train.seed."""
    if seeds is None:
        return
    if not seeds:
        raise invalid("seeds", "give at least one training seed (or leave `seeds` out for the base's train.seed)")
    if len(seeds) > max_seeds:
        raise invalid("seeds", f"{len(seeds)} seeds; at most {max_seeds} per sweep (REGDIFF_MAX_SWEEP_SEEDS)")
    repeated = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if repeated is not None:
        raise invalid("seeds", f"seed {repeated} is given twice; each seed trains every point once")
    if any(k == "train.seed" or k == "train" for k in given):
        raise invalid("seeds", "train.seed is also in vary; give the seeds in `seeds` only")


def _check_size(given: dict[str, list[Any]], seeds: int, baseline: bool, max_points: int, seeded: bool) -> None:
    points = 1
    for values in given.values():
        points *= len(values)
    total = (points + baseline) * seeds
    if total <= max_points:
        return
    sizes = " x ".join(str(len(v)) for v in given.values())
    what = f"{sizes} = {points} points" if len(given) > 1 else f"{points} points"
    if baseline:
        what = f"({what} + 1 lambda=0 baseline)"
    if seeded:
        what = f"{what} x {seeds} seeds"
    message = f"{what} = {total} runs; at most {max_points} per sweep (REGDIFF_MAX_SWEEP_POINTS)"
    raise invalid("seeds" if seeded else "vary", message)


def expand(base_spec: dict[str, Any], given: dict[str, list[Any]], max_points: int, *,
           seeds: list[int] | None = None) -> tuple[dict[str, Any], dict[str, list[Any]], list[RunSpec]]:
    """(canonical base, vary with values as the specs hold them, one RunSpec per run).

    The runs: the lambda = 0 baseline first when no grid point is one (needs_baseline), then every
    grid point, each once per seed (train.seed set; without `seeds`, the base's own seed)."""
    try:
        base = RunSpec.model_validate(base_spec).to_json()
    except ValidationError as exc:
        errors = [{"field": f"base.{e['field']}", "message": e["message"]} for e in field_errors(exc)]
        raise invalid_fields(errors) from None
    if not given:
        raise invalid("vary", f"give at least one dotted path into the spec and its values ({EXAMPLES})")
    baseline = needs_baseline(base, given)
    _check_size(given, len(seeds or [None]), baseline, max_points, seeds is not None)

    errors: list[dict[str, str]] = []
    for key, values in given.items():
        field = f"vary.{key}"
        overlap = next((k for k in given if k != key and (k.startswith(key + ".") or key.startswith(k + "."))),
                       None)
        if not stored.has_path(base, key):
            errors.append({"field": field, "message": f"no field {key!r} in the spec; use a dotted path to an"
                           f" existing field ({EXAMPLES})"})
        elif overlap is not None:
            errors.append({"field": field, "message": f"overlaps vary.{overlap}; vary a field or its parent, not both"})
        elif not values:
            errors.append({"field": field, "message": "give at least one value"})
    if errors:
        raise invalid_fields(errors)

    # Every point; a failing point is blamed on the values that fail with the base alone, else on
    # the combination (values may only make sense together: dataset with model.preset).
    keys = list(given)
    alone: dict[tuple[str, int], str | None] = {}

    def fails_alone(key: str, i: int) -> str | None:
        if (key, i) not in alone:
            try:
                RunSpec.model_validate(stored.set_path(base, key, given[key][i]))
                alone[key, i] = None
            except ValidationError as exc:
                alone[key, i] = _why(exc)
        return alone[key, i]

    found: dict[tuple[str, str], None] = {}  # ordered and without repeats
    specs: list[RunSpec] = []
    normalised: dict[str, dict[int, Any]] = {key: {} for key in keys}
    for combo in itertools.product(*(range(len(given[k])) for k in keys)):
        spec_json = base
        for key, i in zip(keys, combo):
            spec_json = stored.set_path(spec_json, key, given[key][i])
        try:
            spec = RunSpec.model_validate(spec_json)
        except ValidationError as exc:
            blamed = [(f"vary.{k}", f"value {i} ({given[k][i]!r}): {why}") for k, i in zip(keys, combo)
                      if (why := fails_alone(k, i)) is not None]
            point = {k: given[k][i] for k, i in zip(keys, combo)}
            found.update(dict.fromkeys(blamed or [("vary", f"the point {reports.label(point)}: {_why(exc)}")]))
            continue
        specs.append(spec)
        for key, i in zip(keys, combo):
            normalised[key].setdefault(i, stored.get_path(spec.to_json(), key))
    errors = [{"field": f, "message": m} for f, m in found]
    if errors:
        raise invalid_fields(errors)

    vary: dict[str, list[Any]] = {}
    for key in keys:  # values as the specs hold them (0 -> 0.0), so each run's point reads back from its spec
        vary[key] = [normalised[key][i] for i in range(len(given[key]))]
        for i, value in enumerate(vary[key]):
            if value in vary[key][:i]:
                errors.append({"field": f"vary.{key}", "message": f"value {i} ({given[key][i]!r}) is given twice"})
    if errors:
        raise invalid_fields(errors)
    if baseline:
        specs.insert(0, RunSpec.model_validate({**base, "lambda": 0.0}))
    if seeds is not None:
        specs = [RunSpec.model_validate(stored.set_path(spec.to_json(), "train.seed", seed))
                 for spec in specs for seed in seeds]
    return base, vary, specs


def _in_sweep(problem: Problem, vary: dict[str, list[Any]]) -> Problem:
    """A run-level problem (field `dataset`) renamed to where the sweep request set it."""

    def where(field: str) -> str:
        varied = any(field == k or field.startswith(k + ".") or k.startswith(field + ".") for k in vary)
        return f"vary.{field}" if varied else f"base.{field}"

    errors = [{**e, "field": where(e["field"])} for e in problem.errors or []]
    detail = detail_of(errors) or problem.detail
    return Problem(problem.status, problem.title, detail, errors=errors or None, headers=problem.headers,
                   code=problem.code)


def _check_against_server(session: Session, settings: Settings, tenant: str, specs: list[RunSpec],
                          vary: dict[str, list[Any]], replay_key: str | None) -> None:
    """What the spec alone cannot see (uploads, data files, server limits, the queue quota), for every point."""
    try:
        for spec in specs:
            check_against_server(session, settings, tenant, spec)  # the checks of POST /v1/runs, per point
    except Problem as problem:
        raise _in_sweep(problem, vary) from None
    # the whole sweep against the quota: accepted whole or refused whole
    limits.check_run_quota(session, settings, tenant, new_runs=len(specs), idempotency_key=replay_key)


def submit(session: Session, settings: Settings, tenant: str, base_spec: dict[str, Any],
           vary_values: dict[str, list[Any]], *, seeds: list[int] | None = None,
           max_fcd_increase: float | None = None, idempotency_key: str | None = None,
           metadata: dict[str, str] | None = None) -> tuple[Sweep, bool]:
    """Expand, check every point against the server, store the sweep and its runs in one
    transaction, then wake a worker per run; returns (sweep, created). `metadata` goes on the
    sweep and on every one of its runs."""
    pairs = labels.check(metadata)
    check_seeds(seeds, vary_values, settings.max_sweep_seeds)
    base, vary, specs = expand(base_spec, vary_values, settings.max_sweep_points, seeds=seeds)
    options = {"seeds": seeds, "max_fcd_increase": max_fcd_increase}
    options = options if any(v is not None for v in options.values()) else None
    replay_key = f"sweep:{idempotency_key}:0" if idempotency_key is not None else None
    _check_against_server(session, settings, tenant, specs, vary, replay_key)
    try:
        sweep, created = stored.create_sweep(session=session, tenant=tenant, base=base, vary=vary,
                                             specs=[s.to_json() for s in specs], idempotency_key=idempotency_key,
                                             options=options, metadata=pairs)
    except runs.IdempotencyConflict as exc:
        raise idempotency_reused(str(exc)) from None
    session.commit()
    if created:
        enqueue_all([run.id for run in stored.sweep_runs(session=session, sweep=sweep)])
    return sweep, created


def list_sweeps(session: Session, tenant: str, *, limit: int, after: str | None,
                metadata: dict[str, str] | None = None) -> tuple[list[Sweep], bool]:
    return page(stored.list_sweeps, session=session, tenant=tenant, limit=limit, after=after,
                metadata=labels.check_filter(metadata or {}))


def get_sweep(session: Session, tenant: str, sweep_id: str) -> Sweep:
    """Another tenant's sweep answers 404, exactly like a missing one."""
    return found(stored.get_sweep(session=session, tenant=tenant, sweep_id=sweep_id), "sweep", sweep_id)


def cancel(session: Session, sweep: Sweep) -> None:
    """Cancels every unfinished run (queued ones at once, running ones at their next check).

    One commit per run: a run's end locks the run, then its sweep (sweep.finished, in
    store/webhooks.py), so a transaction holding the sweep must not wait for another run."""
    for run in stored.sweep_runs(session=session, sweep=sweep):
        if run.status in ("queued", "running"):
            runs.request_cancel(session=session, run=run)
            session.commit()
    session.expire_all()


def delete(session: Session, sweep: Sweep) -> None:
    """Removes the sweep, its runs and everything they stored, at once, whatever their status: like
    DELETE of a run, a running one is stopped by its worker at its next beat (the lease is gone with
    the row), so deleting needs no cancel first and is never refused."""
    stored.delete_sweep(session=session, sweep_id=sweep.id)
    session.commit()


def ordered_runs(session: Session, sweep: Sweep) -> list[Run]:
    """The sweep's runs: an added lambda = 0 baseline first, then grid order, each point's seeds in
    the order given."""
    vary = sweep.vary or {}
    seeds = (sweep.options or {}).get("seeds") or []

    def key(run: Run) -> tuple[bool, tuple[int, ...], int]:
        order = stored.grid_order(run, vary)
        added = any(i == len(vary[k]) for i, k in zip(order, vary))  # its point is not in the grid
        seed = stored.get_path(run.spec, "train.seed")
        return not added, order, seeds.index(seed) if seed in seeds else 0

    return sorted(stored.sweep_runs(session=session, sweep=sweep), key=key)


def members(session: Session, sweep: Sweep) -> tuple[list[Run], str, list[dict[str, Any]]]:
    """(the sweep's runs in order (ordered_runs), the sweep's status derived from theirs, each run's point)."""
    found = ordered_runs(session, sweep)
    return (found, stored.derive_status(r.status for r in found),
            [stored.point_of(r, sweep.vary or {}) for r in found])


def _seconds(run: Run) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return (as_utc(run.finished_at) - as_utc(run.started_at)).total_seconds()


def report(session: Session, sweep: Sweep
           ) -> tuple[list[Run], list[dict[str, Any]], dict[str, float | None], dict[str, Any]]:
    """(runs, one report row per run, the reference scores of real data, the points with their
    verdicts and the best setting (sweep_verdicts.analyse)) for the sweep's report."""
    found = ordered_runs(session, sweep)
    rows = [reports.row(run_id=r.id, status=r.status, values=stored.point_of(r, sweep.vary or {}), spec=r.spec,
                        evaluation=r.evaluation, seconds=_seconds(r), error=r.error) for r in found]
    return (found, rows, reports.reference([r.evaluation for r in found]),
            sweep_verdicts.analyse(session, sweep.tenant, sweep, found))


def report_png(session: Session, sweep: Sweep) -> bytes:
    """The report as a figure: the Pareto view of the points, and a row per run with its preview grid."""
    found, rows, ref, analysis = report(session, sweep)
    grids = []
    for run in found:
        job = runs.preview(session=session, run_id=run.id)
        grids.append(job.grid_png if job is not None else None)
    title = f"sweep {sweep.id} on {(sweep.base or {}).get('dataset', '?')}"
    return reports.figure_png(title, rows, grids, ref, analysis)
