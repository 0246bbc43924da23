"""False-alarm rate and power of models/verdict.compare on simulated runs (no training, seconds).

A simulated run: a training-seed effect on its penalty mean (relative sd `--seed-rsd`, 1.1% by
default: two lambda=0 seeds on digits/unet-xs differ by ~1.5% ~ sqrt(2) x 1.1%, field notes) and
on its FCD (relative sd 5%), then N per-sample penalty values (gamma, coefficient of variation
0.3, like TV on digits samples), an FCD with 5% sampling noise and 200 bootstrap replicates of it. A/A pairs share
the true means: any verdict other than no_significant_change / kept is a false alarm. Effect
pairs scale the run's penalty by (1 + effect). Reported for one seed per side (seed term from
DEFAULT_SEED_VARIANCE) and for three seeds per side (t over the seeds), with binomial
standard errors; the "samples only" line is the naive bootstrap (seed variance ignored) as anchor.

    python bench/verdict_false_alarms.py --pairs 200
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from models import verdict


def simulate_run(rng: np.random.Generator, *, mean: float, fcd: float, seed_rsd: float, fcd_rsd: float,
                 n: int) -> dict:
    m = mean * (1 + seed_rsd * rng.standard_normal())
    f = fcd * (1 + fcd_rsd * rng.standard_normal()) * (1 + 0.05 * rng.standard_normal())  # seed, then samples
    shape = 1 / 0.3**2
    values = rng.gamma(shape, m / shape, n)
    return {"n_samples": n, "per_sample": {"penalty": values.tolist(), "penalties": {}},
            "penalty": {"real": mean}, "fcd": f, "replicates": {"fcd": (f + 0.05 * f * rng.standard_normal(200)).tolist()}}


def rates(rng: np.random.Generator, *, pairs: int, seeds: int, effect: float, seed_rsd: float, n: int,
          variance: verdict.SeedVariance) -> tuple[float, float]:
    """(share of pairs whose penalty verdict is not no_significant_change, share whose quality is not kept)."""
    penalty_calls = quality_calls = 0
    for i in range(pairs):
        base = [simulate_run(rng, mean=1.0, fcd=100, seed_rsd=seed_rsd, fcd_rsd=0.05, n=n) for _ in range(seeds)]
        run = [simulate_run(rng, mean=1.0 + effect, fcd=100, seed_rsd=seed_rsd, fcd_rsd=0.05, n=n)
               for _ in range(seeds)]
        v = verdict.compare(run, base, seed_variance=variance, seed=i, resamples=1000)["verdict"]
        penalty_calls += v["penalty"] != "no_significant_change"
        quality_calls += v["quality"] != "kept"
    return penalty_calls / pairs, quality_calls / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed-rsd", type=float, default=0.011)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    naive = verdict.SeedVariance(penalty_rsd=0.0, fcd_rsd=0.0, method="calibration", source="samples only")
    se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / args.pairs)  # noqa: E731
    for label, seeds, variance in (("1 seed/side, samples only (anchor)", 1, naive),
                                   ("1 seed/side, default seed term", 1, verdict.DEFAULT_SEED_VARIANCE),
                                   ("3 seeds/side, t over seeds", 3, verdict.DEFAULT_SEED_VARIANCE)):
        for effect in (0.0, -0.13):
            p, q = rates(rng, pairs=args.pairs, seeds=seeds, effect=effect, seed_rsd=args.seed_rsd, n=args.n,
                         variance=variance)
            what = "false alarms (penalty)" if effect == 0 else "power at -13% (penalty)"
            print(f"{label:38s} {what:24s} {p:6.1%} +- {se(p):.1%}   quality not kept {q:6.1%} +- {se(q):.1%}")


if __name__ == "__main__":
    main()
