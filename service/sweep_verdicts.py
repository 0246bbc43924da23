"""A sweep's answer: its points across seeds, each against its lambda = 0 baseline, and the best setting.

Runs are grouped into points by their spec without the seed (service/compare.point_key), so a
sweep with `seeds` gives one point per grid value whose mean and interval cover all its seeds.
Each point is compared with the baseline whose other varied values are its own (a
lambda x estimator grid gives each estimator its lambda = 0 twin), else with the sweep's added
baseline; then verdict.best_setting names the point with the largest significant reduction
whose quality holds (or within the sweep's `max_fcd_increase`), or says that none helped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from models import verdict
from service import compare, reports
from store import sweeps as stored
from store.tables import Run, Sweep

NOT_YET = ("No verdict yet: no point and its lambda=0 baseline are both evaluated (runs pending or failed, or"
           " evaluation off).")


@dataclass
class _Point:
    values: dict[str, Any]
    baseline: bool
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return reports.label(self.values)

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if compare.evaluated(r)]

    def others(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k != "lambda"}


def _points(sweep: Sweep, runs: list[Run]) -> list[_Point]:
    points: dict[str, _Point] = {}
    for run in runs:
        key = json.dumps(compare.point_key(run.spec), sort_keys=True)
        if key not in points:
            points[key] = _Point(stored.point_of(run, sweep.vary or {}), compare.is_baseline(run.spec))
        points[key].runs.append(run)
    return list(points.values())


def _baseline_of(point: _Point, baselines: list[_Point]) -> _Point | None:
    same = [b for b in baselines if b.others() == point.others()]
    return (same or baselines or [None])[0]


def analyse(session: Session, tenant: str, sweep: Sweep, runs: list[Run]) -> dict[str, Any]:
    """{points: [...], best, statement, pareto, max_fcd_increase, comparisons (verdict.best_setting's input)}."""
    points = _points(sweep, runs)
    baselines = [p for p in points if p.baseline]
    limit = (sweep.options or {}).get("max_fcd_increase")
    described_with = (compare.seed_variance(session, tenant, baselines[0].runs[0].spec) if baselines
                      else verdict.DEFAULT_SEED_VARIANCE)
    out, compared = [], []
    for point in points:
        done = point.done
        entry: dict[str, Any] = {
            "label": point.label, "values": point.values, "baseline": point.baseline,
            "run_ids": [r.id for r in point.runs], "seeds": [stored.get_path(r.spec, "train.seed") for r in point.runs],
            "evaluated": len(done), **verdict.describe([r.evaluation for r in done], seed_variance=described_with),
            "relative_change": None, "fcd_difference": None, "verdict": None, "seed_variance": None,
            "compared_with": None,
        }
        base = None if point.baseline else _baseline_of(point, baselines)
        if done and base is not None and base.done:
            c = compare.compare_groups(session, tenant, done, base.done, baseline_label="the lambda=0 baseline")
            entry.update(relative_change=c["penalty"] and c["penalty"]["relative_change"],
                         fcd_difference=c["fcd"] and c["fcd"]["difference"], verdict=c["verdict"],
                         seed_variance=c["seed_variance"], compared_with=base.label)
            compared.append({"label": point.label, "comparison": c})
        out.append(entry)
    best = (verdict.best_setting(compared, max_fcd_increase=limit) if compared
            else {"best": None, "index": None, "pareto": [], "statement": NOT_YET})
    return {"points": out, "best": best["best"], "statement": best["statement"], "pareto": best["pareto"],
            "max_fcd_increase": limit, "comparisons": compared,
            "baseline": next((p for p in out if p["baseline"]), None)}
