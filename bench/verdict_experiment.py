"""The README experiment through the service: does a TV penalty on x0_hat make sense on digits?

Starts a live api and one Celery worker on the embedded backend (SQLite + SQLite broker, in a
temporary folder, like the tests do), submits one seeded sweep over lambda x reg_schedule.t_max
(the service adds the lambda=0 baseline per seed), waits, and prints the report: each point's
TV on samples and FCD over its seeds with 95% intervals, the change against the baseline, the
verdict, the penalty on real data, the noise floor and the recommended setting. Saves the
report figure (Pareto view and sample grids) to the path given. Everything goes through HTTP.

    python bench/verdict_experiment.py report.png                 # ~15 min on 2 quiet CPU cores
    python bench/verdict_experiment.py /tmp/r.png --quick         # tiny settings: proves it works
    python bench/verdict_experiment.py r.png --url http://127.0.0.1:8000   # a running service

The default budget (14 runs of 600 steps x 32 on unet-xs, 512 DDIM-20 samples each) was chosen
for about 15 minutes on 2 CPU cores; the total time is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx

from tests.live import Service, backend_env

TERMINAL = ("succeeded", "failed", "cancelled", "partially-failed")
QUICK = {"steps": 20, "batch_size": 8, "eval_samples": 64, "eval_steps": 4, "lambdas": "1", "t_max": "200",
         "seeds": "0,1", "classifier_steps": 50}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("figure", type=Path, help="where to save report.png")
    p.add_argument("--url", help="a running service instead of starting one (its worker's device decides the speed)")
    p.add_argument("--api-key", help="bearer key for --url")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--preset", default="unet-xs")
    p.add_argument("--steps", type=int, default=600, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lambdas", default="0.3,1,3", help="comma-separated; lambda=0 is added by the service")
    p.add_argument("--t-max", default="200,1000", help="reg_schedule.t_max values: penalty only for t < t_max")
    p.add_argument("--seeds", default="0,1", help="training seeds; every point is trained once per seed")
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the evaluation samples")
    p.add_argument("--classifier-steps", type=int, default=500, help="the evaluator's classifier (started service)")
    p.add_argument("--max-fcd-increase", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds per run): a smoke test, no science")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def _numbers(text: str, kind: type) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


def sweep_request(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "dataset": args.dataset, "regularizer": "tv", "lambda": 1.0, "model": {"preset": args.preset},
        "reg_schedule": {"t_max": _numbers(args.t_max, int)[0]},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "log_every": max(args.steps // 10, 1)},
        "preview": {"n": 16, "steps": 20},
        "evaluation": {"n_samples": args.eval_samples, "steps": args.eval_steps},
        "checkpoint_every": None,
    }
    body: dict[str, Any] = {"base": base, "vary": {"lambda": _numbers(args.lambdas, float),
                                                    "reg_schedule.t_max": _numbers(args.t_max, int)},
                            "seeds": _numbers(args.seeds, int)}
    if args.max_fcd_increase is not None:
        body["max_fcd_increase"] = args.max_fcd_increase
    return body


def run_sweep(client: httpx.Client, body: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    created = client.post("/v1/sweeps", json=body)
    if created.status_code >= 400:
        sys.exit(f"POST /v1/sweeps: {created.status_code} {created.text}")
    sweep = created.json()
    log(f"sweep {sweep['id']}: {sweep['points']} runs queued")
    deadline, last = time.monotonic() + timeout, None
    while sweep["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            sys.exit(f"sweep {sweep['id']} still {sweep['status']} after {timeout:g} s")
        time.sleep(2)
        sweep = client.get(f"/v1/sweeps/{sweep['id']}").raise_for_status().json()
        progress = f"{sweep['status']} {sweep['counts']}"
        if progress != last:
            log(progress)
            last = progress
    return sweep, client.get(f"/v1/sweeps/{sweep['id']}/report").raise_for_status().json()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def experiment(args: argparse.Namespace, url: str, headers: dict[str, str]) -> None:
    body = sweep_request(args)
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        sweep, report = run_sweep(client, body, args.timeout)
        args.figure.write_bytes(client.get(f"/v1/sweeps/{sweep['id']}/report.png").raise_for_status().content)
        baseline = next((r for r in sweep["runs"] if r["baseline"]), None)
        ev = client.get(f"/v1/runs/{baseline['id']}").json()["evaluation"] if baseline else None
    print(f"## {args.dataset}, {args.preset}, {args.steps} steps x {args.batch_size}, seeds {args.seeds},"
          f" {args.eval_samples} DDIM-{args.eval_steps} samples per run\n")
    print(report["markdown"])
    floor = (ev or {}).get("fcd_noise_floor") or {}
    print(f"FCD noise floor (real vs real at N={floor.get('n')}): {floor.get('value')} {floor.get('ci')}")
    print(f"Recommended setting: {report['best'] or 'none'}")
    print(f"Figure: {args.figure}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if args.url:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        experiment(args, args.url.rstrip("/"), headers)
    else:
        with tempfile.TemporaryDirectory(prefix="regdiff-verdict-") as home:
            env, cleanup = backend_env("embedded", Path(home))
            env |= {"REGDIFF_EVAL_CLASSIFIER_STEPS": str(args.classifier_steps), "REGDIFF_LEASE_SECONDS": "30",
                    "REGDIFF_REQUEUE_AFTER_SECONDS": "600", "REGDIFF_LOG_FLUSH_SECONDS": "1"}
            service = Service("embedded", Path(home), env)
            try:
                service.start()
                experiment(args, service.url, {})
            except BaseException:
                print(service.logs(), file=sys.stderr)
                raise
            finally:
                service.stop()
                cleanup()
    print(f"Total time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
