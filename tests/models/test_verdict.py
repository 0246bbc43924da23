"""models/verdict.py on synthetic evaluations with known answers: the seed-variance intervals
against closed forms (scipy's standard error), the A/A and strong-penalty verdicts of the field
notes, FCD quality, the sentence, the Pareto front, the best setting, and the false-alarm rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from models import verdict

NO_SEED_TERM = verdict.SeedVariance(penalty_rsd=0.0, fcd_rsd=0.0, method="calibration", source="samples only")


def evaluation(rng: np.random.Generator, *, mean: float, fcd: float = 100.0, n: int = 512, cv: float = 0.1,
               fcd_sd: float = 2.0) -> dict:
    """A stored evaluation whose per-sample penalty values have exactly `mean` (gamma, relative sd `cv`)."""
    values = rng.gamma(1 / cv**2, cv**2, n)
    values *= mean / values.mean()
    tv = {"samples": mean, "real": 0.48}
    return {"n_samples": n, "fcd": fcd, "fcd_noise_floor": {"value": 3.0}, "penalty": tv, "penalties": {"tv": tv},
            "per_sample": {"penalty": values.tolist(), "penalties": {"tv": values.tolist()}},
            "replicates": {"fcd": (fcd + fcd_sd * rng.standard_normal(200)).tolist()}}


def test_a_group_of_seeds_has_the_t_interval_of_its_mean() -> None:
    """Sampling noise negligible: the interval of 4 seeds' mean is Student's (scipy.stats.t, 3 df)."""
    points = [1.0, 1.1, 0.95, 1.2]
    rng = np.random.default_rng(0)
    side = verdict.Side(points, [np.full(3, p) for p in points])
    reps = verdict.side_replicates(side, rsd=0.5, rng=rng, scales=verdict.t_scales(3, rng, 200_000), resamples=200_000)
    expected = stats.t.interval(0.95, 3, loc=np.mean(points), scale=stats.sem(points))
    assert np.percentile(reps, [2.5, 97.5]) == pytest.approx(expected, rel=0.01)


def test_several_seeds_on_both_sides_give_welchs_interval() -> None:
    """2 seeds a side, sampling noise negligible: the FCD difference's interval is Welch's t interval
    (scipy.stats.ttest_ind(equal_var=False)), and the penalty's relative change is centred on it too."""
    rng = np.random.default_rng(1)
    run_fcd, base_fcd = [120.0, 128.0], [100.0, 106.0]
    run = [evaluation(rng, mean=m, fcd=f, cv=0.001, fcd_sd=0.01) for m, f in zip((0.8, 0.83), run_fcd)]
    base = [evaluation(rng, mean=m, fcd=f, cv=0.001, fcd_sd=0.01) for m, f in zip((1.0, 1.02), base_fcd)]
    result = verdict.compare(run, base, resamples=200_000)
    welch = stats.ttest_ind(run_fcd, base_fcd, equal_var=False).confidence_interval(0.95)
    # ~1.9 degrees of freedom: heavy tails, so the replicates' 2.5% quantile is known to ~1% of the width
    width = welch.high - welch.low
    assert result["fcd"]["difference"]["ci"] == pytest.approx([welch.low, welch.high], abs=0.03 * width)
    assert result["fcd"]["quality"] == "kept"  # +21 is not significant on 2 seeds a side (Welch: p ~ 0.06)
    assert result["seed_variance"] == {"method": "seeds_t"}


def test_one_seed_adds_the_seed_term_to_sampling_noise() -> None:
    """sd of (mu + e)(1 + rsd z), e with sd s: sqrt(s^2 (1 + rsd^2) + mu^2 rsd^2)."""
    within = np.random.default_rng(1).normal(0, 0.02, 5000)
    reps = verdict.side_replicates(verdict.Side([2.0], [within]), rsd=0.03, rng=np.random.default_rng(0),
                                   scales=np.ones(200_000), resamples=200_000)
    s = within.std()
    assert reps.std() == pytest.approx(math.sqrt(s**2 * (1 + 0.03**2) + (2.0 * 0.03) ** 2), rel=0.02)


def test_a_a_pair_at_plus_1_5_percent_is_no_significant_change() -> None:
    """Field notes: two lambda=0 seeds differ by +1.5%, 'significant' over samples alone; not with seeds."""
    rng = np.random.default_rng(0)
    base, run = evaluation(rng, mean=1.0), evaluation(rng, mean=1.015)
    naive = verdict.compare([run], [base], seed_variance=NO_SEED_TERM)
    assert naive["penalty"]["change"] == "increased"  # what a bootstrap over samples alone says
    result = verdict.compare([run], [base], penalty_name="TV")
    assert result["verdict"]["penalty"] == "no_significant_change" and result["verdict"]["quality"] == "kept"
    assert result["penalty"]["relative_change"]["value"] == pytest.approx(0.015, rel=1e-3)
    assert result["seed_variance"]["method"] == "default" and result["seed_variance"]["applied_to"] == ["run", "baseline"]
    assert result["penalties"]["tv"]["real"] == 0.48


@pytest.mark.parametrize("effect", [-0.13, -0.15])
def test_a_strong_penalty_is_reduced(effect: float) -> None:
    rng = np.random.default_rng(2)
    result = verdict.compare([evaluation(rng, mean=1 + effect, fcd=140)], [evaluation(rng, mean=1.0, fcd=100)],
                             penalty_name="TV")
    rel = result["penalty"]["relative_change"]
    assert result["verdict"]["penalty"] == "reduced" and rel["ci"][0] < effect < rel["ci"][1] < 0
    assert result["verdict"]["quality"] == "degraded"
    assert result["fcd"]["difference"]["value"] == pytest.approx(40, rel=1e-3)
    sentence = result["verdict"]["sentence"]
    assert sentence.startswith(f"TV on samples fell {-100 * effect:.3g}% [") and "(real data: 0.48)" in sentence
    assert "FCD rose from 100 [" in sentence and sentence.endswith("quality degraded.")


def test_increase_and_improved_quality() -> None:
    rng = np.random.default_rng(3)
    result = verdict.compare([evaluation(rng, mean=1.2, fcd=70)], [evaluation(rng, mean=1.0, fcd=100)])
    assert result["verdict"]["penalty"] == "increased" and result["verdict"]["quality"] == "improved"
    assert "The penalty on samples rose 20%" in result["verdict"]["sentence"]


def test_several_seeds_use_their_own_spread() -> None:
    """A 5% mean reduction is reduced when the seeds agree, not when they scatter by 10%."""
    rng = np.random.default_rng(4)
    tight = verdict.compare([evaluation(rng, mean=0.95 + d) for d in (-0.002, 0, 0.002)],
                            [evaluation(rng, mean=1.0 + d) for d in (-0.002, 0, 0.002)])
    loose = verdict.compare([evaluation(rng, mean=0.95 + d) for d in (-0.1, 0, 0.1)],
                            [evaluation(rng, mean=1.0 + d) for d in (-0.1, 0, 0.1)])
    assert tight["seed_variance"] == {"method": "seeds_t"} and tight["seeds"] == {"run": 3, "baseline": 3}
    assert tight["verdict"]["penalty"] == "reduced"
    assert loose["verdict"]["penalty"] == "no_significant_change"


def test_false_alarm_rate_on_simulated_a_a_pairs() -> None:
    """A/A pairs whose true seed effect has the field notes' size (rsd 1.1%): <= 5% called an effect."""
    rng = np.random.default_rng(5)
    alarms = 0
    pairs = 60
    for i in range(pairs):
        runs = [evaluation(rng, mean=1 + 0.011 * rng.standard_normal(), fcd=100 * (1 + 0.03 * rng.standard_normal()),
                           n=256) for _ in range(2)]
        alarms += verdict.compare(runs[:1], runs[1:], seed=i, resamples=500)["verdict"]["penalty"] != "no_significant_change"
    assert alarms / pairs <= 0.05


def test_false_alarm_rate_with_two_seeds_a_side() -> None:
    """A/A with 2 seeds a side whose seed effect (5%) dwarfs sampling noise (0.6%): <= 5% called an
    effect, on the penalty and on FCD (binomial sd 1.3% at 300 pairs). The hierarchical bootstrap
    this replaced called 18% (its resampled 2-seed mean takes 3 values); the t term must not."""
    rng = np.random.default_rng(8)
    pairs, penalty_alarms, fcd_alarms = 300, 0, 0
    for i in range(pairs):
        sides = [[evaluation(rng, mean=1 + 0.05 * rng.standard_normal(), fcd=100 * (1 + 0.05 * rng.standard_normal()),
                             n=256, fcd_sd=1.0) for _ in range(2)] for _ in range(2)]
        v = verdict.compare(*sides, seed=i, resamples=500)["verdict"]
        penalty_alarms += v["penalty"] != "no_significant_change"
        fcd_alarms += v["quality"] != "kept"
    assert penalty_alarms / pairs <= 0.06 and fcd_alarms / pairs <= 0.06, (penalty_alarms, fcd_alarms)


def test_missing_values_and_empty_sides() -> None:
    with pytest.raises(ValueError, match="at least one evaluation"):
        verdict.compare([], [{"fcd": 1}])
    result = verdict.compare([{"fcd": None}], [{"fcd": None}])
    assert result["penalty"] is None and result["fcd"] is None and result["verdict"]["penalty"] is None
    assert "Nothing to compare" in result["verdict"]["sentence"]


def test_pareto_front() -> None:
    points = [(1, 5), (2, 3), (3, 4), (0.5, 10), (2, 3), (4, 1)]
    assert verdict.pareto_front(points) == [0, 1, 3, 4, 5]


def test_best_setting() -> None:
    rng = np.random.default_rng(6)
    base = [evaluation(rng, mean=1.0, fcd=100)]
    point = lambda label, mean, fcd: {"label": label, "comparison": verdict.compare(  # noqa: E731
        [evaluation(rng, mean=mean, fcd=fcd)], base)}
    points = [point("λ=0.1", 0.99, 100), point("λ=1", 0.87, 101), point("λ=3", 0.80, 160), point("λ=10", 0.5, 400)]
    best = verdict.best_setting(points)
    assert best["best"] == "λ=1" and best["index"] == 1 and best["statement"].startswith("Best setting: λ=1.")
    assert set(best["pareto"]) == {"λ=0.1", "λ=1", "λ=3", "λ=10"}
    assert verdict.best_setting(points, max_fcd_increase=80)["best"] == "λ=3"
    none = verdict.best_setting(points[:1])
    assert none["best"] is None and none["statement"].startswith("No setting helped")


def test_pareto_figure_renders() -> None:
    from service.reports import pareto_png

    rng = np.random.default_rng(7)
    base = [evaluation(rng, mean=1.0, fcd=100)]
    points = [{"label": f"λ={m}", "comparison": verdict.compare([evaluation(rng, mean=m, fcd=200 - 100 * m)], base)}
              for m in (0.9, 0.8)]
    png = pareto_png("tv on digits", points, verdict.best_setting(points), real_penalty=0.48)
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def _seeds(rng: np.random.Generator, k: int, *, rsd: float, fcd_rsd: float, n: int = 4000) -> list[dict]:
    """k runs whose penalty mean and FCD carry a seed effect of known relative sd (plus sampling noise)."""
    return [evaluation(rng, mean=1.0 * (1 + rsd * rng.standard_normal()), fcd=100 * (1 + fcd_rsd * rng.standard_normal()),
                       n=n, fcd_sd=1.0) for _ in range(k)]


def test_a_calibration_on_many_seeds_recovers_the_seed_spread() -> None:
    """The oracle is the simulation's own seed sd: with 200 runs the prior barely counts, and the
    sampling noise (sd/sqrt(N) of the mean, the replicates' spread for FCD) is subtracted."""
    runs = _seeds(np.random.default_rng(3), 200, rsd=0.04, fcd_rsd=0.08)
    measured = verdict.calibrate(runs, runs=[f"r{i}" for i in range(200)])
    assert measured.penalty_rsd == pytest.approx(0.04, rel=0.15) and measured.fcd_rsd == pytest.approx(0.08, rel=0.15)
    assert measured.method == "calibration" and len(measured.runs) == 200


def test_a_calibration_on_two_seeds_is_moderated_toward_the_default() -> None:
    """One degree of freedom against PRIOR_DF: rsd^2 = (s^2 + 2 d^2) / 3, s the two runs' sd (scipy's)."""
    rng = np.random.default_rng(4)
    runs = [evaluation(rng, mean=m, n=100_000, cv=0.001) for m in (1.0, 1.1)]  # sampling noise negligible
    s = stats.tstd([1.0, 1.1]) / 1.05
    d = verdict.DEFAULT_SEED_VARIANCE.penalty_rsd
    measured = verdict.calibrate(runs)
    assert measured.penalty_rsd == pytest.approx(math.sqrt((s**2 + 2 * d**2) / 3), rel=1e-3)
    assert measured.df == 1 + verdict.PRIOR_DF  # its seed term is Student t on these degrees of freedom
    identical = [evaluation(rng, mean=1.0), evaluation(rng, mean=1.0)]  # no seed effect: the default, shrunk
    assert verdict.calibrate(identical).penalty_rsd == pytest.approx(d * math.sqrt(2 / 3), rel=0.05)
    with pytest.raises(ValueError, match="at least 2"):
        verdict.calibrate(runs[:1])


def test_describe_a_group_of_seeds() -> None:
    rng = np.random.default_rng(5)
    group = [evaluation(rng, mean=m) for m in (1.0, 1.1, 0.9)]
    out = verdict.describe(group)
    assert out["penalty"]["value"] == pytest.approx(1.0, rel=1e-3)
    assert out["penalty"]["ci"][0] < 0.95 and out["penalty"]["ci"][1] > 1.05  # the seeds' spread, not just samples
    assert out["fcd"]["value"] == pytest.approx(100)
    assert verdict.describe([]) == {"penalty": None, "fcd": None}
