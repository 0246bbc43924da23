"""Regularizer-guided sampling through HTTP: does TV guidance lower the TV of samples of a
lambda=0 model, and at what cost in confidence of an independent digit classifier?

    python bench/guidance_effect.py --steps 800 --n 256 --scales 0.5 2

It starts a live api + worker on the embedded backend (as the tests do), trains one lambda=0
run on `digits`, asks `POST /v1/runs/{id}/samples` for the same seed with and without
`guidance`, downloads `samples.npz` and measures everything itself: TV (anisotropic l1, images
in [-1, 1]) with numpy, and the confidence of a scikit-learn logistic regression fitted on the
real digits (a classifier regdiff does not use). Relative changes carry a 95% paired bootstrap
CI over samples (same seed: sample i of both jobs starts from the same noise).
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live import Service, backend_env, wait_for  # noqa: E402


def total_variation(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N,) mean |horizontal| + |vertical| differences in [-1, 1] units."""
    x = images.astype(np.float64) / 127.5 - 1.0
    return np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target


def paired_change(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float, float]:
    """Relative change of mean(b) vs mean(a) with a paired percentile bootstrap CI."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (resamples, len(a)))
    ratios = b[idx].mean(axis=1) / a[idx].mean(axis=1) - 1
    return b.mean() / a.mean() - 1, *np.percentile(ratios, [2.5, 97.5])


def sample(client: httpx.Client, run_id: str, body: dict) -> np.ndarray:
    job = client.post(f"/v1/runs/{run_id}/samples", json=body).raise_for_status().json()
    deadline = time.monotonic() + 1800
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(1)
        job = client.get(f"/v1/samples/{job['id']}").raise_for_status().json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"sample job {job['id']}: {job['status']} {job.get('error')}")
    return np.load(io.BytesIO(client.get(f"/v1/samples/{job['id']}/samples.npz").content))["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="samples per job")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--t-max", type=int, default=1000)
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    real, labels = real_digits()
    classifier = LogisticRegression(max_iter=2000).fit(real.reshape(len(real), -1) / 255, labels)

    def confidence(images: np.ndarray) -> np.ndarray:
        return classifier.predict_proba(images.reshape(len(images), -1) / 255).max(axis=1)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="regdiff-guidance-"))
    env, cleanup = backend_env("embedded", home)
    env.update(REGDIFF_LEASE_SECONDS="30", REGDIFF_REQUEUE_AFTER_SECONDS="60", REGDIFF_MAX_SAMPLE_N=str(args.n))
    service = Service("embedded", home, env).start()
    try:
        client = httpx.Client(base_url=service.url, timeout=60)
        spec = {"dataset": "digits", "lambda": 0, "model": {"preset": "unet-xs"},
                "train": {"steps": args.steps, "batch_size": args.batch, "log_every": 100},
                "evaluation": {"n_samples": 0}}
        run = client.post("/v1/runs", json=spec).raise_for_status().json()
        run = wait_for(client, run["id"], timeout=7200)
        assert run["status"] == "succeeded", run
        base = {"n": args.n, "sampler": "ddim", "steps": args.sample_steps, "seed": 0}
        plain = sample(client, run["id"], base)
        tv_plain, conf_plain = total_variation(plain), confidence(plain)
        print(f"\ndigits, unet-xs, lambda 0, {args.steps} steps x {args.batch}; {args.n} DDIM-{args.sample_steps}"
              f" samples per row, seed 0; {time.monotonic() - started:.0f} s so far\n")
        print(f"TV of real digits: {total_variation(real).mean():.3f}; classifier confidence on real:"
              f" {confidence(real).mean():.3f}\n")
        print("| guidance | TV of samples | TV change [95% CI] | confidence | confidence change [95% CI] |")
        print("|---|---|---|---|---|")
        print(f"| none | {tv_plain.mean():.3f} | - | {conf_plain.mean():.3f} | - |")
        for scale in args.scales:
            guided = sample(client, run["id"], {**base, "guidance": {"regularizer": "tv", "scale": scale,
                                                                      "t_max": args.t_max}})
            tv, conf = total_variation(guided), confidence(guided)
            d_tv, d_conf = paired_change(tv_plain, tv), paired_change(conf_plain, conf)
            print(f"| tv, scale {scale:g}, t < {args.t_max} | {tv.mean():.3f} | {d_tv[0]:+.1%} [{d_tv[1]:+.1%},"
                  f" {d_tv[2]:+.1%}] | {conf.mean():.3f} | {d_conf[0]:+.1%} [{d_conf[1]:+.1%}, {d_conf[2]:+.1%}] |")
        print(f"\ntotal {time.monotonic() - started:.0f} s")
    finally:
        service.stop()
        cleanup()


if __name__ == "__main__":
    main()
