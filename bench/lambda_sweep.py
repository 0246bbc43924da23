"""Lambda sweep, in process: does a TV penalty on x0_hat move the samples, and what does it cost?

    python3 bench/lambda_sweep.py --device cuda --dataset mnist-5k --preset unet-s --steps 600 \
        --eval-samples 256 --out var/sweep
    .venv/bin/python bench/lambda_sweep.py --dataset digits --preset unet-xs --steps 300 --eval-samples 64

Runs the functions the worker runs, with no service, database or broker (so it needs only torch,
diffusers, pydantic and the dataset's package):
    models.trainer.train(spec, data, device=...)                      -> TrainResult.state
    models.samplers.sample_from_state(state, n, sampler="ddim", ...)  the worker's evaluation sampling
    models.evaluation.train_classifier(data, device=..., steps=...)  once, shared by every run
    models.evaluation.evaluate(samples, data, classifier_state=...)  FCD, confidence, TV on samples/real
Runs: the tweedie estimator at each `--lambdas`, then one ddim setting (`--ddim K:G@LAMBDA`).
Every run shares the seed, the spec defaults (reg_schedule.t_max 200 unless `--t-max`), the step
count and the evaluation samples (FCD is biased upwards for small N: compare at equal N only).

Writes, after every run (so a time-boxed run keeps what it finished), into --out:
    sweep.md    the table (markdown), also printed
    sweep.json  config, classifier accuracy, one record per run (all evaluation numbers)
    sweep.png   FCD vs TV on samples across lambda, and a sample grid per run side by side
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models import evaluation
from models.datasets import ImageSet, load_builtin
from models.devices import resolve_device
from models.samplers import sample_from_state
from models.spec import RunSpec
from models.trainer import train

GRID = 16  # samples shown per run in the figure (4 x 4)


def parse_ddim(text: str) -> tuple[int, int, float] | None:
    """"4:1@0.3" -> (steps 4, grad_steps 1, lambda 0.3); "none" -> None."""
    if text.lower() in ("", "none", "off"):
        return None
    try:
        kg, lam = text.split("@")
        k, g = kg.split(":")
        return int(k), int(g), float(lam)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ddim takes K:G@LAMBDA (e.g. 4:1@0.3) or none, not {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--preset", default="unet-s")
    p.add_argument("--steps", type=int, default=600, help="training steps per run")
    p.add_argument("--batch", type=int, help="default: 128 on cuda, 64 on cpu")
    p.add_argument("--eval-samples", type=int, default=256, help="DDIM samples scored per run")
    p.add_argument("--eval-steps", type=int, default=50, help="DDIM steps per sample (the spec's default)")
    p.add_argument("--classifier-steps", type=int, default=500, help="the worker's eval_classifier_steps default")
    p.add_argument("--lambdas", default="0,0.03,0.1,0.3,1", help="comma-separated, tweedie estimator")
    p.add_argument("--ddim", type=parse_ddim, default="4:1@0.3", help="one ddim run K:G@LAMBDA, or none")
    p.add_argument("--t-max", type=int, help="reg_schedule.t_max (default: the spec's, 200)")
    p.add_argument("--regularizer", default="tv", help="a registered regularizer name, default params")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on cpu: the box is shared)")
    p.add_argument("--cache-dir", default="var/bench-cache", help="uint8 .npz cache of the datasets")
    p.add_argument("--out", type=Path, default=Path("var/sweep"), help="folder for sweep.md/.json/.png")
    args = p.parse_args(argv)
    args.lambda_values = [float(x) for x in args.lambdas.split(",") if x.strip()]
    return args


def run_specs(args: argparse.Namespace, batch: int) -> list[tuple[str, RunSpec]]:
    """(label, spec) per run: tweedie at each lambda, then the ddim setting."""
    base: dict[str, Any] = {
        "dataset": args.dataset, "regularizer": args.regularizer, "model": {"preset": args.preset},
        "train": {"steps": args.steps, "batch_size": batch, "seed": args.seed, "log_every": 50},
        "checkpoint_every": None,
        "evaluation": {"n_samples": args.eval_samples, "steps": args.eval_steps, "seed": args.seed},
    }
    if args.t_max is not None:
        base["reg_schedule"] = {"t_max": args.t_max}
    runs = [("tweedie", {**base, "lambda": lam, "estimator": {"kind": "tweedie"}}) for lam in args.lambda_values]
    if args.ddim is not None:
        k, g, lam = args.ddim
        runs.append((f"ddim K={k} grad {g}", {**base, "lambda": lam,
                                               "estimator": {"kind": "ddim", "steps": k, "grad_steps": g}}))
    return [(label, RunSpec.model_validate(spec)) for label, spec in runs]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_run(label: str, spec: RunSpec, data: ImageSet, classifier: bytes | None, device: torch.device,
            regularizer: str) -> tuple[dict[str, Any], np.ndarray]:
    """Train, sample, evaluate; returns the record and the samples (N, H, W, C) uint8."""
    sync(device)
    t0 = time.perf_counter()
    result = train(spec, data, device=device)
    sync(device)
    t1 = time.perf_counter()
    samples = sample_from_state(result.state, n=spec.evaluation.n_samples, sampler="ddim",
                                steps=spec.evaluation.steps, eta=0.0, seed=spec.evaluation.seed, device=device)
    t2 = time.perf_counter()
    report = evaluation.evaluate(samples, data, classifier_state=classifier, device=device)
    t3 = time.perf_counter()
    penalty = (report.get("penalties") or {}).get(regularizer) or {}
    record = {
        "estimator": label, "lambda": spec.lambda_,
        "fcd": report.get("fcd"), "confidence": report.get("confidence"),
        "classifier_score": report.get("classifier_score"),
        "penalty_samples": penalty.get("samples"), "penalty_real": penalty.get("real"),
        "train_seconds": round(t1 - t0, 2), "sample_seconds": round(t2 - t1, 2), "eval_seconds": round(t3 - t2, 2),
        "images_per_second": round(spec.train.steps * spec.train.batch_size / (t1 - t0), 1),
        "train_metrics": result.metrics, "class_histogram": report.get("class_histogram"),
        "reference": report.get("reference"), "penalties": report.get("penalties"),
        "spec": spec.to_json(),
    }
    return record, samples


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(records: list[dict[str, Any]], header: list[str], reg: str) -> str:
    lines = [*header, "",
             (f"| estimator | lambda | FCD | confidence | {reg.upper()} on samples | {reg.upper()} on real"
              " | train s | sample s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['estimator']} | {_fmt(r['lambda'])} | {_fmt(r['fcd'])} | {_fmt(r['confidence'], 3)}"
                     f" | {_fmt(r['penalty_samples'])} | {_fmt(r['penalty_real'])} | {r['train_seconds']:.1f}"
                     f" | {r['sample_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*(H+1)-1, cols*(W+1)-1) greyscale or RGB grid with 1 px gaps."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = im
    return grid[..., 0] if c == 1 else grid


def figure(records: list[dict[str, Any]], grids: list[np.ndarray], path: Path, reg: str, title: str) -> None:
    """Left: FCD vs the penalty on samples, one point per run (tweedie joined in lambda order), the
    penalty of real data as a dashed line. Right: a 4x4 sample grid per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(records)
    cols = min(3, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(5 + 2.2 * cols, max(4.5, 2.4 * rows)), layout="constrained")
    spec = fig.add_gridspec(rows, 1 + cols, width_ratios=[2.2] + [1] * cols)
    ax = fig.add_subplot(spec[:, 0])
    tweedie = [r for r in records if r["estimator"] == "tweedie" and r["fcd"] is not None]
    if tweedie:
        ax.plot([r["penalty_samples"] for r in tweedie], [r["fcd"] for r in tweedie], "o-", label="tweedie")
    for r in tweedie:
        ax.annotate(f"λ={r['lambda']:g}", (r["penalty_samples"], r["fcd"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for r in records:
        if r["estimator"] != "tweedie" and r["fcd"] is not None:
            ax.plot([r["penalty_samples"]], [r["fcd"]], "s", label=f"{r['estimator']}, λ={r['lambda']:g}")
    reals = [r["penalty_real"] for r in records if r["penalty_real"] is not None]
    if reals:
        ax.axvline(reals[0], ls="--", c="grey", label=f"{reg} of real data")
    ax.set_xlabel(f"{reg.upper()} on samples (penalty)")
    ax.set_ylabel("FCD (quality; lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    for i, (r, grid) in enumerate(zip(records, grids, strict=True)):
        sub = fig.add_subplot(spec[i // cols, 1 + i % cols])
        sub.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        sub.set_title(f"{r['estimator']}, λ={r['lambda']:g}\nFCD {_fmt(r['fcd'], 3)}, "
                      f"{reg} {_fmt(r['penalty_samples'], 3)}", fontsize=8)
        sub.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    batch = args.batch or (128 if device.type == "cuda" else 64)
    args.out.mkdir(parents=True, exist_ok=True)
    specs = run_specs(args, batch)  # validate every spec before spending time
    data = load_builtin(args.dataset, Path(args.cache_dir))

    t0 = time.perf_counter()
    classifier = None
    accuracy = None
    if data.labels is not None:
        classifier = evaluation.train_classifier(data, device=device, seed=args.seed, steps=args.classifier_steps)
        accuracy = json.loads(evaluation.classifier_metadata(classifier).get("holdout_accuracy", "null"))
    classifier_seconds = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    t_max = specs[0][1].reg_schedule.t_max
    header = [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; device: {name}; torch {torch.__version__}",
        (f"- {args.dataset}, {args.preset}, {args.steps} steps x batch {batch}, {args.regularizer} penalty,"
         f" reg_schedule.t_max {t_max}; evaluation: {args.eval_samples} DDIM-{args.eval_steps} samples"),
        (f"- classifier: {args.classifier_steps} steps in {classifier_seconds:.1f} s, held-out accuracy"
         f" {_fmt(accuracy, 3)}"),
        f"- command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
    ]
    config = {**{k: v for k, v in vars(args).items() if k not in ("out", "ddim")}, "ddim": args.ddim,
              "batch": batch, "device": name, "torch": torch.__version__, "python": platform.python_version(),
              "classifier_accuracy": accuracy, "classifier_seconds": round(classifier_seconds, 2)}

    records: list[dict[str, Any]] = []
    grids: list[np.ndarray] = []
    title = f"{args.dataset}, {args.preset}, {args.steps} steps, t_max {t_max}, N={args.eval_samples}"
    for label, spec in specs:
        record, samples = one_run(label, spec, data, classifier, device, args.regularizer)
        records.append(record)
        grids.append(tile(samples[:GRID], 4))
        table = markdown(records, header, args.regularizer)
        print(f"\n## after {label}, lambda {spec.lambda_:g}\n\n{table}", flush=True)
        (args.out / "sweep.md").write_text(table)
        (args.out / "sweep.json").write_text(json.dumps({"config": config, "runs": records}, indent=1))
        figure(records, grids, args.out / "sweep.png", args.regularizer, title)
    print(f"wrote {args.out}/sweep.md, sweep.json, sweep.png", file=sys.stderr)


if __name__ == "__main__":
    main()
