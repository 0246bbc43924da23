"""Fault injection: submit runs, kill workers with SIGKILL and flush the broker while they
train, then count runs lost (not succeeded, or not at full step count) and duplicated (more
than one run per submission, or more than one worker training a run at the same time).

    python bench/fault_injection.py --backend postgres-redis --runs 8 --kills 4 --flushes 1

Uses the same live services as the tests (tests/live.py): the api and real worker processes
on PostgreSQL + Redis (or the embedded SQLite pair).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live import Service, backend_env, purge_broker

SPEC = {
    "dataset": "digits", "regularizer": "tv", "lambda": 0.1, "model": {"preset": "unet-xs"},
    "train": {"steps": 150, "batch_size": 16, "log_every": 5}, "preview": {"n": 4, "steps": 10},
    "checkpoint_every": 25,
}


def overlapping_attempts(events: list[dict]) -> int:
    """Two 'running' events with no worker loss in between would mean two owners at once:
    every claim after the first must follow an expired lease (a 'requeued' event)."""
    claims = requeues = 0
    for e in events:
        if e["type"] == "status" and e["data"] and e["data"].get("status") == "running":
            claims += 1
        elif e["type"] == "requeued":
            requeues += 1
    return max(0, claims - 1 - requeues)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres-redis"], default="postgres-redis")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--flushes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    home = Path(tempfile.mkdtemp(prefix="regdiff-faults-"))
    env, cleanup = backend_env(args.backend, home)
    service = Service(args.backend, home, env).start()
    started = time.monotonic()
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            keys = [f"fault-{i}" for i in range(args.runs)]
            ids = [client.post("/v1/runs", json=SPEC, headers={"Idempotency-Key": k}).json()["id"] for k in keys]
            # Retried submissions (same key, same body) must not make new runs.
            ids_again = [client.post("/v1/runs", json=SPEC, headers={"Idempotency-Key": k}).json()["id"] for k in keys]
            faults = {"kill": 0, "flush": 0, "resubmit": len(keys)}
            plan = ["kill"] * args.kills + ["flush"] * args.flushes
            rng.shuffle(plan)
            for fault in plan:
                time.sleep(rng.uniform(2, 6))
                if fault == "kill":
                    service.kill_worker()
                    service.start_worker()
                else:
                    purge_broker(service)
                faults[fault] += 1
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                runs = [client.get(f"/v1/runs/{i}").json() for i in ids]
                if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs):
                    break
                time.sleep(1)
            listed = [r for page in [client.get("/v1/runs", params={"limit": 100}).json()] for r in page["data"]]
            lost = [r["id"] for r in runs if r["status"] != "succeeded" or r["step"] != SPEC["train"]["steps"]]
            duplicated = (len(listed) - len(ids)) + sum(a != b for a, b in zip(ids, ids_again))
            overlaps = sum(
                overlapping_attempts(client.get(f"/v1/runs/{i}/events", params={"limit": 1000}).json()["data"])
                for i in ids)
            attempts = [r["attempts"] for r in runs]
    finally:
        service.stop()
        cleanup()
    elapsed = time.monotonic() - started
    print(f"backend: {args.backend}")
    print(f"runs submitted: {args.runs} (each submitted twice with one Idempotency-Key)")
    print(f"faults injected: {sum(faults.values())} ({faults['kill']} worker SIGKILLs, {faults['flush']} broker"
          f" flushes, {faults['resubmit']} retried submissions)")
    print(f"runs lost: {len(lost)} {lost if lost else ''}")
    print(f"runs duplicated: {duplicated}; runs trained by two workers at once: {overlaps}")
    print(f"attempts per run: {attempts}; wall time {elapsed:.0f} s")
    return 0 if not lost and not duplicated and not overlaps else 1


if __name__ == "__main__":
    raise SystemExit(main())
