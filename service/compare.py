"""Does the extra loss make sense? One evaluated run against a baseline, with seed variance.

`GET /v1/runs/{id}/compare?baseline={other}`: the statistics are models/verdict.py's; this module
decides what goes into them.

- **Seeds.** A run that belongs to a sweep brings every seed of its point (the sweep's runs whose
  specs differ only in `train.seed`), and so does the baseline: with several seeds on both
  sides, the intervals come from the spread between those seeds (Welch's t over the seed means,
  models/verdict.py: method "seeds_t").
- **Calibration.** With one run on a side, the between-seed spread is not observed, so it is
  estimated from the tenant's own succeeded lambda = 0 runs of the baseline's recipe (same
  dataset, network, training and evaluation settings; only the seed differs): at least two
  such runs give a calibration (`seed_variance.method` "calibration", with their ids in
  `runs`), moderated toward the default (verdict.calibrate); fewer give the documented default
  (`DEFAULT_SEED_VARIANCE`, method "default"). The runs being judged are part of the pool when
  they are lambda = 0 runs of the recipe: leaving the judged run out was tried, and with two
  other runs that happened to agree (1.2% apart) it called a 6% seed difference "reduced".
  No table stores the estimate: it is recomputed from the runs each time (a few hundred floats
  per run), so it follows the runs as they are added or deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from models import verdict
from service.errors import Problem, invalid
from store import comparisons, runs
from store.tables import Run

# Fields that do not change what a run learns (its seed is handled apart): runs that differ only
# in these are seeds of one point.
_NOT_THE_POINT = ("train.seed", "train.log_every", "preview", "checkpoint_every", "time_limit_seconds")
# At lambda = 0 the penalty's weight is zero, so where and how it would be estimated does not
# change training either: lambda = 0 runs that differ only in these share a calibration.
_NOT_THE_RECIPE = (*_NOT_THE_POINT, "lambda", "estimator", "reg_schedule")


def _without(spec: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
    for path in paths:
        head, _, tail = path.partition(".")
        if tail and isinstance(out.get(head), dict):
            out[head].pop(tail, None)
        elif not tail:
            out.pop(head, None)
    return out


def point_key(spec: dict[str, Any]) -> dict[str, Any]:
    """What a run's point is: its spec without the seed and what does not change training."""
    return _without(spec, _NOT_THE_POINT)


def recipe_key(spec: dict[str, Any]) -> dict[str, Any]:
    """What a lambda = 0 run's model depends on besides its seed (calibration groups)."""
    return _without(spec, _NOT_THE_RECIPE)


def evaluated(run: Run) -> bool:
    """Succeeded with an evaluation that kept its per-sample values (needed by verdict.compare)."""
    ev = run.evaluation or {}
    return run.status == "succeeded" and not ev.get("error") and bool(ev.get("per_sample"))


def is_baseline(spec: dict[str, Any]) -> bool:
    return float(spec.get("lambda") or 0.0) == 0.0


def penalty_name(spec: dict[str, Any]) -> str:
    """How the run's own penalty is named in a sentence: "TV", "TV + L1"."""
    return " + ".join(str(term.get("name", "?")).upper() for term in spec.get("regularizer") or []) or "the penalty"


def _why_not_evaluated(run: Run) -> str | None:
    ev = run.evaluation or {}
    if run.status != "succeeded":
        return f"run {run.id} is {run.status}; only a succeeded run has an evaluation"
    if not ev:
        return f"run {run.id} was not evaluated (evaluation.n_samples was 0 or the server's REGDIFF_EVAL_SAMPLES is 0)"
    if ev.get("error"):
        return f"run {run.id}'s evaluation failed: {ev['error']}"
    if not ev.get("per_sample"):
        return f"run {run.id} was evaluated before per-sample values were kept; train it again to compare it"
    return None


def _check_pair(run: Run, baseline: Run) -> None:
    """The run must be evaluated (409 otherwise); the baseline comparable with it (422 naming `baseline`)."""
    why = _why_not_evaluated(run)
    if why is not None:
        raise Problem(409, "Conflict", why)
    problem = _why_not_evaluated(baseline)
    if problem is None and baseline.id == run.id:
        problem = "a run cannot be its own baseline; give another run (e.g. its lambda=0 twin)"
    if problem is None and baseline.spec.get("dataset") != run.spec.get("dataset"):
        problem = (f"run {baseline.id} was trained on {baseline.spec.get('dataset')!r}, run {run.id} on"
                   f" {run.spec.get('dataset')!r}: compare runs of one dataset")
    if problem is None and baseline.evaluation.get("n_samples") != run.evaluation.get("n_samples"):
        problem = (f"run {baseline.id} was evaluated on {baseline.evaluation.get('n_samples')} samples, run {run.id}"
                   f" on {run.evaluation.get('n_samples')}: FCD depends on N, compare runs evaluated at equal"
                   " evaluation.n_samples")
    if problem is None and baseline.spec.get("regularizer") != run.spec.get("regularizer"):
        problem = (f"run {baseline.id} measured another penalty ({penalty_name(baseline.spec)}, its regularizer)"
                   f" than run {run.id} ({penalty_name(run.spec)}); train the baseline with the run's regularizer"
                   " at lambda=0 (it is measured, not trained on)")
    if problem is not None:
        raise invalid("baseline", problem)


def seed_group(session: Session, tenant: str, run: Run) -> list[Run]:
    """The run and, when it belongs to a sweep, that sweep's evaluated runs of the same point (other seeds)."""
    if run.sweep_id is None:
        return [run]
    key = point_key(run.spec)
    others = [r for r in comparisons.sweep_members(session=session, tenant=tenant, sweep_id=run.sweep_id)
              if r.id != run.id and evaluated(r) and point_key(r.spec) == key]
    return [run, *others]


def seed_variance(session: Session, tenant: str, baseline_spec: dict[str, Any]) -> verdict.SeedVariance:
    """A calibration from the tenant's lambda = 0 runs of the baseline's recipe, else the default."""
    recipe = recipe_key(baseline_spec)
    found = [r for r in comparisons.succeeded_runs(session=session, tenant=tenant)
             if is_baseline(r.spec) and evaluated(r) and recipe_key(r.spec) == recipe
             and (r.evaluation.get("per_sample") or {}).get("penalty") and (r.evaluation.get("replicates") or {})
             .get("fcd")]
    if len(found) < 2:
        return verdict.DEFAULT_SEED_VARIANCE
    return verdict.calibrate([r.evaluation for r in found], runs=[r.id for r in found],
                             source=f"{len(found)} of this tenant's lambda=0 runs of the baseline's recipe that"
                                    f" differ only in seed, moderated toward the default"
                                    f" ({verdict.PRIOR_DF} prior degrees of freedom)")


def compare_groups(session: Session, tenant: str, run_side: Sequence[Run], base_side: Sequence[Run],
                   *, baseline_label: str) -> dict[str, Any]:
    """verdict.compare of two groups of seeds (each run evaluated), with the seed variance chosen here."""
    spec = run_side[0].spec
    needs_estimate = len(run_side) == 1 or len(base_side) == 1
    variance = seed_variance(session, tenant, base_side[0].spec) if needs_estimate else verdict.DEFAULT_SEED_VARIANCE
    result = verdict.compare([r.evaluation for r in run_side], [r.evaluation for r in base_side],
                             penalty_name=penalty_name(spec), seed_variance=variance, baseline_label=baseline_label)
    result["runs"] = {"run": [r.id for r in run_side], "baseline": [r.id for r in base_side]}
    if result["penalty"] is not None:
        result["penalty"]["terms"] = spec.get("regularizer")
    return result


def baseline_label(baseline: Run) -> str:
    if is_baseline(baseline.spec):
        return "the lambda=0 baseline"
    return f"run {baseline.id} (lambda={baseline.spec.get('lambda'):g})"


def compare(session: Session, tenant: str, run: Run, baseline_id: str) -> dict[str, Any]:
    """The run against `baseline_id` (this tenant's; another tenant's answers like a missing one)."""
    baseline = runs.get_run(session=session, tenant=tenant, run_id=baseline_id)
    if baseline is None:
        raise Problem(404, "Not Found", f"baseline: no run with id {baseline_id!r}",
                      errors=[{"field": "baseline", "message": f"no run with id {baseline_id!r}"}])
    _check_pair(run, baseline)
    run_side = seed_group(session, tenant, run)
    base_side = seed_group(session, tenant, baseline)
    if {r.id for r in run_side} & {r.id for r in base_side}:  # two seeds of one point: compare just the two
        run_side, base_side = [run], [baseline]
    result = compare_groups(session, tenant, run_side, base_side, baseline_label=baseline_label(baseline))
    return {"object": "run_comparison", "run_id": run.id, "baseline_id": baseline.id,
            "dataset": run.spec.get("dataset"), **result}
