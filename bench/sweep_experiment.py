"""The README experiment: does a total-variation penalty on x0_hat make sense on MNIST?

A sweep over lambda in {0, 0.03, 0.1, 0.3, 1} on mnist-5k with the `tv` penalty, for the
one-step Tweedie estimate and for one DDIM setting (K steps from x_t to 0, backprop through the
last one), each run evaluated at the end (FCD and confidence from the cached classifier, the
penalty on samples and on real digits). Prints the report table as markdown and saves the
table (JSON and markdown) and the figure.

Against a running service (the api and at least one worker; a GPU worker for unet-s):

    python bench/sweep_experiment.py --url http://127.0.0.1:8000 --steps 4000 --preset unet-s

Without a service, in this process (same spec expansion, trainer, evaluator and report code):

    python bench/sweep_experiment.py --in-process --steps 4000 --preset unet-s --device cuda

The grid is lambda x estimator.kind, so lambda = 0 appears once per estimator: both runs are the
plain diffusion loss with the same seed, a free check that the two agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = (0.0, 0.03, 0.1, 0.3, 1.0)
TERMINAL = ("succeeded", "failed", "cancelled", "partially-failed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running regdiff service, e.g. http://127.0.0.1:8000")
    where.add_argument("--in-process", action="store_true", help="train and evaluate here, without a service")
    p.add_argument("--api-key", default=os.environ.get("REGDIFF_API_KEY"), help="bearer key (or REGDIFF_API_KEY)")
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--preset", default="unet-s")
    p.add_argument("--steps", type=int, default=4000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lambdas", default=",".join(f"{v:g}" for v in LAMBDAS), help="comma-separated")
    p.add_argument("--t-max", type=int, default=200, help="reg_schedule.t_max: penalty only for t < t_max")
    p.add_argument("--ddim-steps", type=int, default=4, help="the DDIM estimator's steps (backprop through 1)")
    p.add_argument("--eval-samples", type=int, default=512, help="samples per run for the evaluation")
    p.add_argument("--eval-steps", type=int, default=50, help="DDIM steps of those samples")
    p.add_argument("--device", default="auto", help="--in-process only: auto, cpu or cuda")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_experiment")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between status polls")
    p.add_argument("--timeout", type=float, default=48 * 3600, help="give up waiting after this many seconds")
    return p.parse_args(argv)


def sweep_request(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "dataset": args.dataset,
        "regularizer": [{"name": "tv", "weight": 1.0, "params": {"norm": "l1"}}],
        "model": {"preset": args.preset, "prediction": "epsilon"},
        "estimator": {"kind": "tweedie", "steps": args.ddim_steps, "grad_steps": 1},
        "reg_schedule": {"t_max": args.t_max},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "seed": 0},
        "preview": {"n": 16, "sampler": "ddim", "steps": 50},
        "evaluation": {"n_samples": args.eval_samples, "steps": args.eval_steps},
        "checkpoint_every": max(args.steps // 4, 1),
    }
    lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    return {"base": base, "vary": {"lambda": lambdas, "estimator.kind": ["tweedie", "ddim"]}}


# ---- against a service ---------------------------------------------------------------------------


def run_service(args: argparse.Namespace, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=120) as client:
        created = client.post("/v1/sweeps", json=body)
        if created.status_code >= 400:
            sys.exit(f"POST /v1/sweeps: {created.status_code} {created.text}")
        sweep = created.json()
        log(f"sweep {sweep['id']}: {sweep['points']} runs queued")
        deadline = time.monotonic() + args.timeout
        last = None
        while sweep["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                sys.exit(f"sweep {sweep['id']} still {sweep['status']} after {args.timeout:g} s; cancel it with"
                         f" POST /v1/sweeps/{sweep['id']}/cancel")
            time.sleep(args.poll)
            sweep = client.get(f"/v1/sweeps/{sweep['id']}").raise_for_status().json()
            progress = f"{sweep['status']} {sweep['counts']} " + " ".join(f"{r['progress']:.0%}" for r in sweep["runs"])
            if progress != last:
                log(progress)
                last = progress
        report = client.get(f"/v1/sweeps/{sweep['id']}/report").raise_for_status().json()
        png = client.get(f"/v1/sweeps/{sweep['id']}/report.png").raise_for_status().content
    return report, png


# ---- in this process -----------------------------------------------------------------------------


def run_in_process(args: argparse.Namespace, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    sys.path.insert(0, str(ROOT))
    import torch

    from models import evaluation
    from models.datasets import load_builtin
    from models.devices import resolve_device
    from models.images import grid_png
    from models.samplers import sample_from_state
    from models.spec import RunSpec
    from models.trainer import train
    from service import reports
    from store.settings import get_settings
    from store.sweeps import grid, set_path
    from worker.evaluation import score

    settings = get_settings()
    device = resolve_device(args.device)
    base = RunSpec.model_validate(body["base"]).to_json()
    data = load_builtin(args.dataset, settings.cache_dir, data_dir=settings.resolved_data_dir,
                        allow_download=settings.allow_download)
    started = time.monotonic()
    classifier = evaluation.train_classifier(data, device=device, steps=settings.eval_classifier_steps)
    log(f"classifier trained in {time.monotonic() - started:.1f} s"
        f" (held-out accuracy {evaluation.classifier_metadata(classifier)['holdout_accuracy']})")
    rows, grids, evaluations = [], [], []
    for i, point in enumerate(grid(body["vary"])):
        spec_json = base
        for key, value in point.items():
            spec_json = set_path(spec_json, key, value)
        spec = RunSpec.model_validate(spec_json)
        label = reports.label(point)
        log(f"[{i + 1}] {label}: training {spec.train.steps} steps on {device}")
        t0 = time.monotonic()
        result = train(spec, data, device=device)
        preview = sample_from_state(result.state, n=spec.preview.n, sampler=spec.preview.sampler,
                                    steps=spec.preview.steps, seed=spec.preview.seed, device=device)
        samples = sample_from_state(result.state, n=spec.evaluation.n_samples or 0, sampler="ddim",
                                    steps=spec.evaluation.steps, seed=spec.evaluation.seed, device=device)
        ev = score(spec, samples, data, classifier_state=classifier, device=torch.device(device))
        seconds = time.monotonic() - t0
        rows.append(reports.row(run_id=f"local-{i + 1}", status="succeeded", values=point, spec=spec.to_json(),
                                evaluation=ev, seconds=seconds, error=None))
        grids.append(grid_png(preview))
        evaluations.append(ev)
        log(f"[{i + 1}] {label}: fcd {ev['fcd']}, confidence {ev['confidence']},"
            f" tv on samples {ev['penalty']['samples']} (real {ev['penalty']['real']}), {seconds:.0f} s")
    keys = list(body["vary"])
    ref = reports.reference(evaluations)
    report = {"object": "sweep_report", "sweep_id": "in-process", "status": "succeeded", "keys": keys,
              "rows": rows, "reference": ref, "markdown": reports.markdown(keys, rows, ref)}
    png = reports.figure_png(f"in-process sweep on {args.dataset}", rows, grids, ref)
    return report, png


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.eval_samples < 2:
        sys.exit("--eval-samples: at least 2 (a Frechet distance needs a covariance)")
    body = sweep_request(args)
    report, png = run_in_process(args, body) if args.in_process else run_service(args, body)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"request": body, "report": report}, indent=2))
    (args.out / "report.md").write_text(report["markdown"])
    (args.out / "report.png").write_bytes(png)
    print(report["markdown"])
    log(f"saved {args.out / 'report.md'}, {args.out / 'report.json'} and {args.out / 'report.png'}")
    return 0 if report["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
