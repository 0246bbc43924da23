"""CUDA smoke check for models/: bf16 training, the ddim estimator, sampling, and host syncs per step.

    python3 bench/cuda_smoke.py --device cuda                  # mnist-5k, unet-s, batch 128, 50 steps
    .venv/bin/python bench/cuda_smoke.py --device cpu --dataset digits --preset unet-xs --steps 5

tests/models cannot run on the GPU machine as they are (tests/conftest.py imports the service
stack: sqlalchemy, and they build everything on the CPU anyway), so this exercises the CUDA paths
directly and fails loudly (exit 1) on a non-finite loss, a wrong dtype or a broken sampler:
  1. tweedie TV at every t (t_max 1000), precision auto (fp32 for the small presets), `--steps` steps,
     then bf16 autocast; CUDA only: the captured-graph step (train.compile auto) against eager, same seed;
  2. ddim K=4, backprop through a random cut of the last 2 calls, gradient checkpointing, t_max 200;
  3. 64 samples with each sampler (ddpm, ddim, dpm_solver; 10 steps), uint8 and not constant;
  4. CUDA only: host syncs per training step, counted with torch.cuda.set_sync_debug_mode("warn")
     over 5 and 15 steps with no log step in between (the trainer promises none outside logging);
  5. three sweep points (lambda 0, tweedie, ddim K=2) as one stacked model (models/stacked.py, on CUDA
     its step captured as a graph) against each trained alone: the weights must agree.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models import checkpoint
from models.datasets import ImageSet, load_builtin
from models.devices import resolve_device
from models.samplers import SAMPLERS, sample_from_state
from models.spec import RunSpec
from models.stacked import StackedPoint, train_stacked
from models.trainer import train, uses_bf16


def spec(args: argparse.Namespace, **overrides) -> RunSpec:
    train_over = overrides.pop("train", {})
    return RunSpec.model_validate({
        "dataset": args.dataset, "model": {"preset": args.preset}, "checkpoint_every": None, "lambda": 0.1,
        **overrides,
        "train": {"steps": args.steps, "batch_size": args.batch, "log_every": 10, **train_over},
    })


def check_finite(name: str, metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad, f"{name}: non-finite metrics {bad}"
    print(f"ok  {name}: {', '.join(f'{k} {v:.4g}' for k, v in metrics.items())}", flush=True)


def syncs_per_step(args: argparse.Namespace, data: ImageSet, device: torch.device, **overrides) -> float:
    """(syncs in 15 steps - syncs in 5 steps) / 10, each run with one log step (the last)."""
    counts = []
    for steps in (5, 15):
        s = spec(args, train={"steps": steps, "log_every": 1000}, **overrides)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(s, data, device=device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return (counts[1] - counts[0]) / 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--preset", default="unet-s")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cache-dir", default="var/bench-cache")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    device = resolve_device(args.device)
    started = time.perf_counter()
    data = load_builtin(args.dataset, Path(args.cache_dir))
    if device.type == "cuda":
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuda {torch.version.cuda}")

    # 1. precision auto (fp32 for the small presets), every sample penalised; then bf16 autocast;
    #    then the same run eagerly: a captured CUDA graph must compute what the eager step computes.
    s = spec(args, reg_schedule={"t_max": 1000}, estimator={"kind": "tweedie"})
    assert not uses_bf16(s, device), "precision auto must mean fp32 for unet-xs/unet-s"
    result = train(s, data, device=device)
    check_finite(f"tweedie t<1000, {args.steps} steps", result.metrics)
    bf16 = spec(args, reg_schedule={"t_max": 1000}, train={"precision": "bf16"})
    check_finite("tweedie t<1000, bf16 autocast", train(bf16, data, device=device).metrics)
    if device.type == "cuda":
        print(f"ok  CUDA graph capture: {result.metrics['compile_seconds']:.2f} s")
        eager = train(spec(args, reg_schedule={"t_max": 1000}, train={"compile": "off"}), data, device=device)
        graphed, plain = checkpoint.from_bytes(result.state), checkpoint.from_bytes(eager.state)
        worst = max((graphed.model[k] - plain.model[k]).abs().max().item() for k in plain.model)
        print(f"{'ok ' if worst < 1e-3 else 'BAD'} graphs vs eager, {args.steps} steps: max weight difference {worst:.2e}")
        assert worst < 1e-3, "the captured step drifted from the eager one"

    # 2. ddim with a random cut and gradient checkpointing (torch.utils.checkpoint under autocast).
    ddim = spec(args, train={"steps": max(args.steps // 2, 2)},
                estimator={"kind": "ddim", "steps": 4, "grad_steps": 2, "random_cut": True, "checkpointing": True})
    check_finite("ddim K=4 cut<=2 checkpointing", train(ddim, data, device=device).metrics)

    # 3. Every sampler from the tweedie run's EMA weights.
    for sampler in SAMPLERS:
        t0 = time.perf_counter()
        images = sample_from_state(result.state, n=64, sampler=sampler, steps=10, seed=0, device=device)
        assert images.dtype == np.uint8 and images.shape[0] == 64, f"{sampler}: {images.dtype} {images.shape}"
        assert images.std() > 0, f"{sampler}: constant images"
        print(f"ok  sample {sampler}: {images.shape}, mean {images.mean():.1f}, {time.perf_counter() - t0:.2f} s")

    # 4. Host syncs per step (CUDA only: the sync debug mode exists there).
    if device.type == "cuda":
        for label, over in [
            ("vanilla", {"lambda": 0.0}),
            ("tweedie t<1000", {"reg_schedule": {"t_max": 1000}}),
            ("ddim K=4 g1 t<200", {"estimator": {"kind": "ddim", "steps": 4}}),
            ("ddim K=4 g1 t<1000", {"estimator": {"kind": "ddim", "steps": 4}, "reg_schedule": {"t_max": 1000}}),
        ]:
            print(f"syncs/step {label}: {syncs_per_step(args, data, device, **over):.2f}", flush=True)
    # 5. A sweep's points as one stack against each alone (grouped kernels round differently, and
    #    AdamW turns that into steps of up to lr where a gradient is ~0: a loose bound, gross errors only).
    points = [spec(args, train={"steps": min(args.steps, 20), "seed": i}, **over) for i, over in enumerate([
        {"lambda": 0.0}, {"reg_schedule": {"t_max": 1000}}, {"estimator": {"kind": "ddim", "steps": 2}}])]
    stacked = train_stacked([StackedPoint(point) for point in points], data, device=device)
    for point, together in zip(points, stacked, strict=True):
        alone = checkpoint.from_bytes(train(point, data, device=device).state)
        mine = checkpoint.from_bytes(together.state)
        worst = max((mine.model[k] - alone.model[k]).abs().max().item() for k in alone.model)
        print(f"{'ok ' if worst < 1e-2 else 'BAD'} stacked vs alone, lambda {point.lambda_} {point.estimator.kind}:"
              f" max weight difference {worst:.2e}")
        assert worst < 1e-2, "a stacked point drifted from the same run alone"
    print(f"SMOKE OK in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
