"""Does the extra loss make sense? A run (or a group of seeds) against its lambda = 0 baseline.

Pure functions over stored evaluations (models/evaluation.py's dicts): no sampling, no service.
For every penalty (the run's own, and every registered one) both sides' means with intervals, the
relative change with an interval, and the real-data value; both FCDs and the interval of their
difference; and a verdict (penalty reduced / no_significant_change / increased, quality kept /
degraded / improved) with one plain sentence.

Why seeds: two lambda = 0 runs that differ only in their training seed differ by about 1.5% in
TV on samples (digits, unet-xs; field notes), which a bootstrap over samples alone calls
"significant". So every interval here also carries training-seed variance:

- several seeds on a side: the spread between its seeds is measured on them. Each seed's point
  estimate already carries that seed's sampling noise, so the variance of the seed points is the
  variance of one seed's value (floored at the sampling part, which the within-seed replicates
  measure); the side's mean gets sd sqrt(var / k). That variance is itself estimated on k - 1
  degrees of freedom, so the seed term is Student t, not normal: a draw z * sqrt(df / chi2_df)
  per replicate, shared by both sides, with Welch's degrees of freedom when both sides have
  several seeds (method "seeds_t"). This is Welch's t interval on the seed means, in the
  replicate form the ratio (relative change) needs. A hierarchical bootstrap (resample seeds,
  then samples) was used before: with 2 seeds a side the resampled seed mean takes 3 values, and
  on simulated A/A pairs whose seed effect has sd 5% it called 18% of them an effect (3 seeds:
  11%, 5 seeds: 7%); tests/models/test_verdict.py checks the t form against scipy's Welch test
  and its false-alarm rate at 2 seeds a side;
- one seed on a side: a parametric seed term, each replicate of that side multiplied by
  (1 + rsd * z * sqrt(df / chi2_df)), z ~ N(0, 1), with the relative standard deviation of the
  penalty mean and of FCD between seeds given by the caller: measured by calibration runs (method
  "calibration", on df = runs - 1 + PRIOR_DF degrees of freedom), or `DEFAULT_SEED_VARIANCE`
  (method "default", a documented value taken as known: z alone).

Which was used is stated in the result (`seed_variance`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class SeedVariance:
    """Between-seed relative standard deviation of one run's penalty mean and of its FCD."""

    penalty_rsd: float
    fcd_rsd: float
    method: str = "calibration"  # "calibration" (measured for this dataset and preset) or "default"
    source: str = ""
    runs: tuple[str, ...] = ()  # the runs a calibration was measured on
    df: float | None = None  # degrees of freedom of the rsd estimates; None: taken as known (the default)


# Two lambda=0 seeds on digits/unet-xs differed by +1.5% [0.3%, 2.8%] and +1.3% [0.05%, 2.6%] in
# TV (field notes): a difference of two runs has sd sqrt(2) * rsd, so rsd ~ 1.5% / sqrt(2) ~ 1.1%;
# 1.5% is kept as a margin for the two-pair estimate. FCD between seeds was not measured yet:
# 5% is a placeholder until calibration runs measure it.
DEFAULT_SEED_VARIANCE = SeedVariance(
    penalty_rsd=0.015, fcd_rsd=0.05, method="default",
    source="field notes: two lambda=0 seeds on digits/unet-xs differ by +1.5% [0.3%, 2.8%] in TV; FCD rsd assumed",
)


# A between-seed variance from k runs has k - 1 degrees of freedom: from two runs it is one squared
# difference, as likely 0.1x as 3x the truth. So a measured variance is pooled with the default as
# if the default had been measured on PRIOR_DF degrees of freedom (a scaled inverse-chi-squared
# prior, the "moderated variance" of limma): two runs move the estimate a third of the way, nine
# runs four fifths.
PRIOR_DF = 2


def calibrate(evaluations: Sequence[Mapping], *, runs: Sequence[str] = (), source: str = "",
              default: SeedVariance = DEFAULT_SEED_VARIANCE) -> SeedVariance:
    """The between-seed relative sd of the penalty mean and of FCD from k >= 2 evaluations of runs
    that differ only in their training seed, moderated toward `default` (see PRIOR_DF).

    Each run's point estimate carries its own sampling noise; that part (the mean within-run
    variance: var(per-sample values) / N for the penalty, the variance of the bootstrap replicates
    for FCD) is subtracted, since compare() adds sampling noise separately.
    """
    if len(evaluations) < 2:
        raise ValueError(f"a calibration needs at least 2 runs that differ only in seed; got {len(evaluations)}")
    df = len(evaluations) - 1

    def moderated(points: list[float], within: list[float], prior: float) -> float:
        mean = float(np.mean(points))
        between = max(float(np.var(points, ddof=1)) - float(np.mean(within)), 0.0) / mean**2 if mean else 0.0
        return math.sqrt((df * between + PRIOR_DF * prior**2) / (df + PRIOR_DF))

    penalty = [np.asarray(ev["per_sample"]["penalty"], np.float64) for ev in evaluations]
    fcd = [np.asarray(ev["replicates"]["fcd"], np.float64) for ev in evaluations]
    return SeedVariance(
        penalty_rsd=moderated([float(v.mean()) for v in penalty], [float(v.var(ddof=1)) / len(v) for v in penalty],
                              default.penalty_rsd),
        fcd_rsd=moderated([float(ev["fcd"]) for ev in evaluations], [float(r.var(ddof=1)) for r in fcd],
                          default.fcd_rsd),
        method="calibration", runs=tuple(runs), df=df + PRIOR_DF,
        source=source or f"{len(evaluations)} runs that differ only in seed, moderated toward the default"
                         f" with {PRIOR_DF} prior degrees of freedom",
    )


def _seed_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Within-seed bootstrap of the mean of per-sample values (N,) -> (resamples,)."""
    return values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)


def t_scales(df: float | None, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """sqrt(df / chi2_df) per replicate (resamples,): a normal draw times it is Student t with df
    degrees of freedom, the spread of a mean whose variance is itself estimated. Ones when df is
    None or infinite (a spread taken as known)."""
    if df is None or not math.isfinite(df):
        return np.ones(resamples)
    return np.sqrt(df / rng.chisquare(df, resamples))


@dataclass(frozen=True)
class Side:
    """One side's per-seed inputs for one metric: point estimates and within-seed replicates."""

    points: list[float]
    within: list[np.ndarray]

    @property
    def k(self) -> int:
        return len(self.points)

    @property
    def mean(self) -> float:
        return float(np.mean(self.points))

    def seed_var(self) -> float:
        """Variance of one seed's value (k >= 2): the seed points' variance, never below the sampling
        variance their within-seed replicates measure (two seeds can agree by chance)."""
        sampling = float(np.mean([np.var(w, ddof=1) for w in self.within]))
        return max(float(np.var(self.points, ddof=1)), sampling)


def side_replicates(side: Side, *, rsd: float, rng: np.random.Generator, scales: np.ndarray,
                    resamples: int = RESAMPLES) -> np.ndarray:
    """Replicates (resamples,) of a side's statistic averaged over its seeds.

    One seed: its within-seed replicates' deviations (sampling noise) times the parametric seed
    term (1 + rsd * z * scales). Several: mean + sqrt(seed_var / k) * z * scales, with scales
    t_scales(df) (Student t). scales: (resamples,), shared by both sides of a comparison when
    their spreads come from one estimate.
    """
    z = rng.standard_normal(resamples)
    if side.k == 1:
        w = np.asarray(side.within[0], np.float64)
        noise = w[rng.integers(0, len(w), resamples)] - w.mean()
        return (side.points[0] + noise) * (1 + rsd * z * scales)
    return side.mean + math.sqrt(side.seed_var() / side.k) * z * scales


def welch_df(run: Side, base: Side) -> float:
    """Welch-Satterthwaite degrees of freedom of the difference of two sides' means (k >= 2 each)."""
    a, b = run.seed_var() / run.k, base.seed_var() / base.k
    denominator = a**2 / (run.k - 1) + b**2 / (base.k - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else math.inf


def pair_replicates(run: Side, base: Side, *, seed_variance: SeedVariance, rsd: float,
                    rng: np.random.Generator, resamples: int = RESAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of both sides' means. The t scales are shared where one estimate of the spread
    serves both sides: Welch's df when both have several seeds, the calibration's df when both
    have one; a mixed pair draws each side's own (its k - 1, or the calibration's df)."""
    def own(side: Side) -> np.ndarray:
        return t_scales(seed_variance.df if side.k == 1 else side.k - 1, rng, resamples)

    if run.k > 1 and base.k > 1:
        shared = t_scales(welch_df(run, base), rng, resamples)
        scales = shared, shared
    elif run.k == 1 and base.k == 1:
        shared = own(run)
        scales = shared, shared
    else:
        scales = own(run), own(base)
    return (side_replicates(run, rsd=rsd, rng=rng, scales=scales[0], resamples=resamples),
            side_replicates(base, rsd=rsd, rng=rng, scales=scales[1], resamples=resamples))


def _interval(replicates: np.ndarray, level: float = LEVEL) -> list[float]:
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(replicates, [tail, 100 - tail])]


def _estimate(value: float, replicates: np.ndarray) -> dict[str, Any]:
    """{value, ci}: the point estimate and the interval of its replicates recentred on it (by their
    median: with 2 seeds the t term has 1 to 2 degrees of freedom, whose draws have no usable mean)."""
    return {"value": _sig(value), "ci": [_sig(v) for v in _interval(value + replicates - np.median(replicates))]}


def _sig(v: float) -> float:
    return float(f"{v:.4g}")


def _direction(ci: Sequence[float], below: str, within: str, above: str) -> str:
    return below if ci[1] < 0 else above if ci[0] > 0 else within


def _penalty_side(evaluations: Sequence[Mapping], name: str | None, rng: np.random.Generator) -> Side | None:
    """The per-sample values of penalty `name` (None: the run's own) in every seed's evaluation."""
    points, within = [], []
    for ev in evaluations:
        per_sample = ev.get("per_sample") or {}
        values = per_sample.get("penalty") if name is None else (per_sample.get("penalties") or {}).get(name)
        if not values:
            return None
        values = np.asarray(values, np.float64)
        points.append(float(values.mean()))
        within.append(_seed_means(values, rng, 200))
    return Side(points, within)


def _fcd_side(evaluations: Sequence[Mapping]) -> Side | None:
    if any(ev.get("fcd") is None or not (ev.get("replicates") or {}).get("fcd") for ev in evaluations):
        return None
    return Side([float(ev["fcd"]) for ev in evaluations],
                [np.asarray(ev["replicates"]["fcd"], np.float64) for ev in evaluations])


def _real_value(evaluations: Sequence[Mapping], name: str | None) -> float | None:
    entry = evaluations[0].get("penalty") if name is None else (evaluations[0].get("penalties") or {}).get(name)
    return (entry or {}).get("real")


def compare_penalty(run: Side, base: Side, *, seed_variance: SeedVariance, rng: np.random.Generator,
                    resamples: int = RESAMPLES) -> dict[str, Any]:
    """Both sides' means with intervals and the relative change run/baseline - 1 with its interval."""
    r, b = pair_replicates(run, base, seed_variance=seed_variance, rsd=seed_variance.penalty_rsd, rng=rng,
                           resamples=resamples)
    change = _estimate(run.mean / base.mean - 1, r / b - 1) if base.mean else {"value": None, "ci": None}
    return {"run": _estimate(run.mean, r), "baseline": _estimate(base.mean, b), "relative_change": change,
            "change": "no_significant_change" if change["ci"] is None
            else _direction(change["ci"], "reduced", "no_significant_change", "increased")}


def compare_fcd(run: Side, base: Side, *, seed_variance: SeedVariance, rng: np.random.Generator,
                resamples: int = RESAMPLES) -> dict[str, Any]:
    """Both FCDs with intervals and the difference run - baseline with its interval."""
    r, b = pair_replicates(run, base, seed_variance=seed_variance, rsd=seed_variance.fcd_rsd, rng=rng,
                           resamples=resamples)
    difference = _estimate(run.mean - base.mean, r - b)
    return {"run": _estimate(run.mean, r), "baseline": _estimate(base.mean, b), "difference": difference,
            "quality": _direction(difference["ci"], "improved", "kept", "degraded")}


def compare(run: Sequence[Mapping], baseline: Sequence[Mapping], *, penalty_name: str | None = None,
            seed_variance: SeedVariance = DEFAULT_SEED_VARIANCE, baseline_label: str = "the lambda=0 baseline",
            seed: int = 0, resamples: int = RESAMPLES) -> dict[str, Any]:
    """A run against its baseline, each given as the stored evaluations of its seeds (one or more).

    penalty_name: how the run's own penalty is named in the sentence (e.g. "TV"; default
    "the penalty"). Returns {n_samples, seeds, seed_variance, penalty (the run's own, or None when
    the evaluations lack it), penalties {name: ...}, fcd (or None), verdict {penalty, quality,
    sentence}}. Raises ValueError when a side is empty.
    """
    if not run or not baseline:
        raise ValueError("compare needs at least one evaluation on each side (run and baseline)")
    rng = np.random.default_rng(seed)
    several = len(run) > 1 and len(baseline) > 1
    used = ({"method": "seeds_t"} if several
            else {**asdict(seed_variance), "applied_to": [side for side, evs in (("run", run), ("baseline", baseline))
                                                          if len(evs) == 1]})

    def penalty(name: str | None) -> dict[str, Any] | None:
        sides = _penalty_side(run, name, rng), _penalty_side(baseline, name, rng)
        if None in sides:
            return None
        out = compare_penalty(*sides, seed_variance=seed_variance, rng=rng, resamples=resamples)
        return out | {"real": _real_value(baseline, name)}

    names = sorted(set.intersection(*(set((ev.get("per_sample") or {}).get("penalties") or {}) for ev in (*run, *baseline))))
    own = penalty(None)
    fcd_sides = _fcd_side(run), _fcd_side(baseline)
    fcd = None if None in fcd_sides else compare_fcd(*fcd_sides, seed_variance=seed_variance, rng=rng,
                                                     resamples=resamples)
    if fcd is not None:
        fcd["noise_floor"] = (baseline[0].get("fcd_noise_floor") or {}).get("value")
    result = {
        "n_samples": {"run": [ev.get("n_samples") for ev in run], "baseline": [ev.get("n_samples") for ev in baseline]},
        "seeds": {"run": len(run), "baseline": len(baseline)},
        "seed_variance": used,
        "penalty": own,
        "penalties": {name: penalty(name) for name in names},
        "fcd": fcd,
    }
    result["verdict"] = verdict(own, fcd, penalty_name=penalty_name or "the penalty", baseline_label=baseline_label)
    return result


def describe(evaluations: Sequence[Mapping], *, seed_variance: SeedVariance = DEFAULT_SEED_VARIANCE, seed: int = 0,
             resamples: int = RESAMPLES) -> dict[str, Any]:
    """One group of seeds on its own: {penalty, fcd}, each {value, ci} (or None when the evaluations
    lack it): the mean over seeds with Student's t interval on its k - 1 degrees of freedom (one
    seed: its sampling noise and the seed term of `seed_variance`, as in compare())."""
    if not evaluations:
        return {"penalty": None, "fcd": None}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for key, side, rsd in (("penalty", _penalty_side(evaluations, None, rng), seed_variance.penalty_rsd),
                           ("fcd", _fcd_side(evaluations), seed_variance.fcd_rsd)):
        if side is None:
            out[key] = None
            continue
        scales = t_scales(seed_variance.df if side.k == 1 else side.k - 1, rng, resamples)
        out[key] = _estimate(side.mean, side_replicates(side, rsd=rsd, rng=rng, scales=scales, resamples=resamples))
    return out


def verdict(penalty: Mapping[str, Any] | None, fcd: Mapping[str, Any] | None, *, penalty_name: str,
            baseline_label: str) -> dict[str, Any]:
    """{penalty, quality, sentence} from compare_penalty's and compare_fcd's results (either may be None)."""
    parts = []
    change = quality = None
    if penalty is not None and penalty["relative_change"]["value"] is not None:
        change = penalty["change"]
        rel = penalty["relative_change"]
        lo, hi = (100 * v for v in rel["ci"])
        value = 100 * rel["value"]
        if change == "reduced":
            what = f"fell {-value:.3g}% [{-hi:.3g}%, {-lo:.3g}%]"
        elif change == "increased":
            what = f"rose {value:.3g}% [{lo:.3g}%, {hi:.3g}%]"
        else:
            what = f"did not change significantly ({value:+.3g}% [{lo:+.3g}%, {hi:+.3g}%])"
        real = "" if penalty.get("real") is None else f" (real data: {penalty['real']:.3g})"
        parts.append(f"{penalty_name} on samples {what} vs {baseline_label}{real}")
    if fcd is not None:
        quality = fcd["quality"]
        r, b = fcd["run"], fcd["baseline"]
        moved = "rose" if r["value"] > b["value"] else "fell"
        parts.append(f"FCD {moved} from {_num(b)} to {_num(r)}: quality {quality}")
    sentence = "; ".join(parts) or "nothing to compare: the evaluations carry no per-sample values"
    return {"penalty": change, "quality": quality, "sentence": sentence[0].upper() + sentence[1:] + "."}


def _num(estimate: Mapping[str, Any]) -> str:
    lo, hi = estimate["ci"]
    return f"{estimate['value']:.3g} [{lo:.3g}, {hi:.3g}]"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (penalty on samples, FCD) that no other point beats on both (lower is better)."""
    front = []
    for i, (p, f) in enumerate(points):
        dominated = any(q <= p and g <= f and (q, g) != (p, f) for q, g in points)
        if not dominated:
            front.append(i)
    return front


def best_setting(points: Sequence[Mapping[str, Any]], *, max_fcd_increase: float | None = None) -> dict[str, Any]:
    """The sweep point with the largest significant penalty reduction whose quality holds.

    points: [{"label": str, "comparison": compare(...) of that point vs the baseline}, ...].
    A point qualifies when its penalty is `reduced` and its quality is `kept` or `improved` or,
    when max_fcd_increase is given, its FCD rose by at most that much (point estimate). Returns
    {best: label or None, index, statement, pareto: [labels] on (penalty mean, FCD)}.
    """
    def qualifies(c: Mapping[str, Any]) -> bool:
        if c["verdict"]["penalty"] != "reduced":
            return False
        fcd = c.get("fcd")
        if fcd is None or fcd["quality"] != "degraded":
            return True
        return max_fcd_increase is not None and fcd["difference"]["value"] <= max_fcd_increase

    candidates = [i for i, p in enumerate(points) if qualifies(p["comparison"])]
    plotted = [i for i, p in enumerate(points) if p["comparison"].get("penalty") and p["comparison"].get("fcd")]
    front = pareto_front([(points[i]["comparison"]["penalty"]["run"]["value"],
                           points[i]["comparison"]["fcd"]["run"]["value"]) for i in plotted])
    pareto = [points[plotted[j]]["label"] for j in front]
    if not candidates:
        limit = "" if max_fcd_increase is None else f" or an FCD increase within {max_fcd_increase:g}"
        return {"best": None, "index": None, "pareto": pareto,
                "statement": f"No setting helped: none reduced the penalty significantly with quality kept{limit}."}
    i = min(candidates, key=lambda j: points[j]["comparison"]["penalty"]["relative_change"]["value"])
    return {"best": points[i]["label"], "index": i, "pareto": pareto,
            "statement": f"Best setting: {points[i]['label']}. {points[i]['comparison']['verdict']['sentence']}"}
