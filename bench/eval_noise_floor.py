"""How many evaluation samples? The FCD noise floor (real vs real at N) against a lambda=0 run's FCD.

Trains the evaluation classifier and one lambda = 0 run (unet-xs by default) in this process,
draws `max(--ns)` DDIM-50 samples once, then for each N: the run's FCD on `--rounds` disjoint
(or, when too few, seeded random) subsets of N samples, and the noise floor two ways: N real
images drawn with replacement vs the real set (what evaluate() reports), and, where the set
holds 2N images, two disjoint real halves of N (the classic estimate). The anchor is the run's
FCD at the largest N, measured in the same process; ratios are floor / run FCD at the same N,
mean +- sd over the rounds. The default N is the smallest N whose floor is under 10% of it.
`--steps 0` skips the run (floor only: minutes less on a busy CPU).

    python bench/eval_noise_floor.py --dataset digits --steps 800 --ns 64,256,500,1000,2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import evaluation  # noqa: E402
from models.datasets import load_builtin, to_tensor  # noqa: E402
from models.samplers import sample_from_state  # noqa: E402
from models.spec import RunSpec  # noqa: E402
from models.trainer import train  # noqa: E402
from store.settings import get_settings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--preset", default="unet-xs")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ns", default="64,256,500,1000,2000")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    ns = [int(v) for v in args.ns.split(",")]
    torch.set_num_threads(1)
    settings = get_settings()
    data = load_builtin(args.dataset, settings.cache_dir, data_dir=settings.resolved_data_dir,
                        allow_download=settings.allow_download)
    t0 = time.monotonic()
    model = evaluation.load_classifier(evaluation.train_classifier(data, device="cpu"), "cpu")
    spec = {"dataset": args.dataset, "lambda": 0.0, "model": {"preset": args.preset},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "seed": 0}}
    state = train(RunSpec.model_validate(spec), data, device="cpu").state if args.steps else None
    t1 = time.monotonic()
    samples = sample_from_state(state, n=max(ns), sampler="ddim", steps=50, seed=0, device="cpu") if state else None
    t2 = time.monotonic()
    print(f"{args.dataset}, {args.preset}, {args.steps} steps x {args.batch_size}: classifier + training {t1 - t0:.0f} s,"
          f" {max(ns)} DDIM-50 samples {t2 - t1:.0f} s ({(t2 - t1) / max(ns) * 1000:.0f} ms/sample)")
    feats = lambda x: evaluation.batched(model.features, to_tensor(x)).double().numpy()  # noqa: E731
    real = feats(evaluation.real_subset(data))
    fake = feats(samples) if samples is not None else None
    rng = np.random.default_rng(0)
    print("| N | run FCD (mean +- sd) | floor, bootstrap | floor, disjoint halves | bootstrap floor / run FCD |")
    print("|---|---|---|---|---|")
    for n in ns:
        run, boot, halves = [], [], []
        for r in range(args.rounds):
            pick = rng.permutation(max(ns))[:n] if n * args.rounds > max(ns) else np.arange(r * n, (r + 1) * n)
            if fake is not None:
                run.append(evaluation.frechet_distance(fake[pick], real))
            boot.append(evaluation.frechet_distance(real[rng.integers(0, len(real), n)], real))
            if 2 * n <= len(real):
                order = rng.permutation(len(real))
                halves.append(evaluation.frechet_distance(real[order[:n]], real[order[n:2 * n]]))
        ratio = np.array(boot) / np.array(run) if run else np.array([np.nan])
        half = f"{np.mean(halves):.3g} +- {np.std(halves):.2g}" if halves else "n/a (set < 2N)"
        print(f"| {n} | {np.mean(run) if run else float('nan'):.4g} +- {np.std(run) if run else float('nan'):.2g} | {np.mean(boot):.3g} +- {np.std(boot):.2g} | {half}"
              f" | {ratio.mean():.1%} +- {ratio.std():.1%} |")


if __name__ == "__main__":
    main()
