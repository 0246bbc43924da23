"""Chaos: PostgreSQL + Redis, 3 workers, 20+ tiny runs, and for a bounded time a seeded random
mix of worker SIGKILL, SIGSTOP past the lease then SIGCONT, SIGTERM (a deploy) then a new
worker, a PostgreSQL restart and a Redis restart. Then it waits for every run to end and
prints runs lost, duplicated, trained by two workers at once, stale writes accepted, runs
failed by infrastructure, attempts spent and the broker's message count.

Every figure is read from what the database accepted, never from what the workers computed: a
worker frozen past its lease keeps computing when it wakes, and fencing cannot (and need not)
stop that; what it must stop is that computation's writes. So "trained by two workers at once"
is a run where writes of two owners were both accepted, see `stale_metric_writes`.

    python bench/chaos.py --duration 180 --runs 24 --seed 0

PostgreSQL and Redis are private instances on free ports in a temporary folder (initdb and
redis-server, the machine's own binaries): restarting them disturbs no one else on a shared
machine, and they are stopped and removed when the bench ends, Ctrl-C included. The api and
the workers are real processes started as the tests start them (tests/live.py).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.tables import Checkpoint, Run, RunEvent  # noqa: E402
from tests.live import FAST, Service, free_port  # noqa: E402

QUEUE = "chaos"
FAULTS = ("sigkill", "sigstop", "sigterm", "postgres", "redis")
TERMINAL = ("succeeded", "failed", "cancelled")
DEPLOY_GRACE = 10.0  # seconds a SIGTERMed worker gets before the SIGKILL (docker stop's default)


def spec(i: int, steps: int) -> dict:
    """Tiny runs; every other one checkpoints every 5 steps, so resumes start mid-run."""
    return {"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "model": {"preset": "unet-xs"},
            "train": {"steps": steps, "batch_size": 8, "log_every": 1}, "preview": {"n": 4, "steps": 5},
            "checkpoint_every": 5 if i % 2 == 0 else 1000}


class PrivatePostgres:
    """A throw-away cluster (initdb) on a free port; runs as `postgres` when we are root."""

    def __init__(self, root: Path):
        self.dir, self.port = root / "pg", free_port()
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # No pipes: a server that pg_ctl starts would inherit them and hold them open forever.
        subprocess.run([*as_postgres, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def restart(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-m", "fast",
                  "-w", "restart")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")


class PrivateRedis:
    """redis-server without persistence (as .ci/run starts it): a restart loses every message."""

    def __init__(self, root: Path):
        self.dir, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def messages(self) -> tuple[int, int]:
        """(messages waiting in both queues, messages delivered and not acknowledged).

        The second are the messages a SIGKILLed worker held: Redis gives them back only after the
        visibility timeout (12 h), and by then their runs have ended, so their claims are refused and
        they are dropped. They are no flood; the waiting ones would be."""
        client = redis.Redis.from_url(self.url)
        return client.llen(QUEUE) + client.llen(f"{QUEUE}-samples"), client.hlen("unacked")


class Chaos:
    def __init__(self, service: Service, pg: PrivatePostgres, broker: PrivateRedis, rng: random.Random):
        self.service, self.pg, self.broker, self.rng = service, pg, broker, rng
        self.workers = [service.worker, service.spawn_worker(), service.spawn_worker()]
        self.lease = float(service.env["REGDIFF_LEASE_SECONDS"])
        self.done: Counter[str] = Counter()

    def inject(self, fault: str) -> None:
        slot = self.rng.randrange(len(self.workers))
        worker = self.workers[slot]
        if fault == "sigkill":
            self._signal(worker, signal.SIGKILL)
            worker.wait()
            self.workers[slot] = self.service.spawn_worker()
        elif fault == "sigstop":  # frozen past its lease (a GC pause, a partition), then wakes up
            self._signal(worker, signal.SIGSTOP)
            time.sleep(2 * self.lease + 1)
            self._signal(worker, signal.SIGCONT)
        elif fault == "sigterm":  # a deploy: warm shutdown, SIGKILL after the grace period, a new worker
            self._signal(worker, signal.SIGTERM)
            try:
                worker.wait(timeout=DEPLOY_GRACE)
            except subprocess.TimeoutExpired:
                self._signal(worker, signal.SIGKILL)
                worker.wait()
            self.workers[slot] = self.service.spawn_worker()
        elif fault == "postgres":
            self.pg.restart()
        else:
            self.broker.restart()
        self.done[fault] += 1

    @staticmethod
    def _signal(proc: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    def stop_workers(self) -> None:
        for worker in self.workers:
            self._signal(worker, signal.SIGCONT)
            self._signal(worker, signal.SIGKILL)
            worker.wait()


def progress(engine, ids: list[str]) -> tuple[int, tuple]:
    """(runs not ended yet, a fingerprint that changes whenever any run moves: status, step, attempts)."""
    with engine.connect() as conn:
        rows = conn.execute(select(Run.id, Run.status, Run.step, Run.attempts).where(Run.id.in_(ids))).all()
    return sum(r.status not in TERMINAL for r in rows), tuple(sorted(tuple(r) for r in rows))


def wait_all(url: str, ids: list[str], timeout: float, stall: float) -> str:
    """Wait until every run ended; returns "ended", "stalled" or "timeout".

    A run that is not done when the wait ends is not necessarily lost: on a loaded 2-core machine
    the workers may still be training it. So the wait is for as long as anything moves (up to
    `timeout`), and only a fleet where nothing moved for `stall` seconds makes the remaining runs
    "lost" (nobody will ever finish them). A wait cut short while runs still moved reports them
    as unfinished: the bench was too impatient for the machine (more --timeout, fewer --steps)."""
    engine = create_engine(url, pool_pre_ping=True)
    deadline, moved, last = time.monotonic() + timeout, time.monotonic(), None
    try:
        while True:
            try:
                pending, fingerprint = progress(engine, ids)
            except Exception:  # the database is still coming back from the last restart
                pending, fingerprint = len(ids), last
            if pending == 0:
                return "ended"
            if fingerprint != last:
                moved, last = time.monotonic(), fingerprint
            if time.monotonic() - moved > stall:
                return "stalled"
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(2)
    finally:
        engine.dispose()


def is_claim(event: RunEvent) -> bool:
    return event.type == "status" and (event.data or {}).get("status") == "running"


def stale_metric_writes(events: list[RunEvent]) -> int:
    """Metric writes that the run's owner of the moment could not have made: a stale writer's.

    Every claim writes a "running" status event in its own transaction, naming the checkpoint step
    it resumes from (`resume_step`); a fenced write locks the run's row, so each write an owner made
    lies between its claim's event and the next claim's. Within one claim the metric steps rise
    strictly from past `resume_step`. A resumed run re-trains the steps after its last checkpoint
    and writes their metrics again: that is correct (the new owner's writes, after its claim) and
    counts nothing here. (The first version of this bench also counted, as "backward steps", the
    same final step written twice by one owner, the worker's end-of-training flush, and reset at
    the "resumed" event, which would hide a stale write between a claim and its resume.) A step at
    or below the previous one within a claim is one the owner did not write: a stale worker's."""
    count, last = 0, 0
    for event in events:
        if is_claim(event):
            last = (event.data or {}).get("resume_step", 0)
        elif event.type == "metrics":
            step = event.data["step"]
            count += step <= last
            last = max(last, step)
    return count


def writes_after_end(events: list[RunEvent]) -> int:
    """Events after the run's first terminal status: nobody holds an ended run, so any is stale."""
    ends = [i for i, e in enumerate(events) if e.type == "status" and (e.data or {}).get("status") in TERMINAL]
    return len(events) - ends[0] - 1 if ends else 0


def measure(url: str, ids: list[str], replayed: list[str], waited: str) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        runs = {r.id: r for r in conn.execute(select(Run))}
        stale, after_end, extra_final, tails = {}, 0, 0, {}
        for run_id in ids:
            events = list(conn.execute(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
            stale[run_id] = stale_metric_writes(events)
            after_end += writes_after_end(events)
            finals = conn.execute(select(Checkpoint.id).where(Checkpoint.run_id == run_id,
                                                              Checkpoint.is_final.is_(True))).all()
            extra_final += max(0, len(finals) - 1)
            tails[run_id] = [f"{e.type}:{e.message[:60]}" for e in events[-3:]]
    engine.dispose()
    mine = [runs.get(i) for i in ids]
    unended = [i for i, r in zip(ids, mine) if r is not None and r.status not in TERMINAL]
    return {
        # Missing, ended short of its steps, or not ended while the whole fleet stood still.
        "lost": [i for i, r in zip(ids, mine) if r is None or (r.status == "succeeded" and r.step != r.total_steps)]
                + (unended if waited == "stalled" else []),
        "unfinished": {i: f"{runs[i].status} {runs[i].step}/{runs[i].total_steps} attempts {runs[i].attempts}"
                       f" {tails[i]}" for i in unended},
        "duplicated": len(runs) - len(set(ids)) + sum(a != b for a, b in zip(ids, replayed)),
        "two_at_once": [i for i, n in stale.items() if n],
        "stale_writes": sum(stale.values()) + after_end + extra_final,
        "stale_detail": f"{sum(stale.values())} metric writes by a stale owner, {after_end} writes after the run"
                        f" ended, {extra_final} extra final checkpoints",
        "failed": {r.id: f"{(r.error or '')[:100]} {tails[r.id]}" for r in mine if r is not None
                   and r.status == "failed"},
        "attempts": Counter(r.attempts for r in mine if r is not None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of fault injection")
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run")
    parser.add_argument("--lease", type=float, default=float(FAST["REGDIFF_LEASE_SECONDS"]),
                        help="REGDIFF_LEASE_SECONDS; give a loaded machine slack (data loading precedes the heartbeat)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="most seconds to wait for the runs to end after the faults, while they still move")
    parser.add_argument("--stall", type=float, default=300,
                        help="seconds without any run moving after which the unended runs count as lost")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (service and server logs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM cleans up like Ctrl-C
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="regdiff-chaos-"))
    root.chmod(0o755)  # the postgres user reaches its folder inside
    pg, broker = PrivatePostgres(root), PrivateRedis(root)
    service = chaos = None
    started = time.monotonic()
    try:
        pg.start()
        broker.start()
        (root / "home").mkdir()
        env = {"REGDIFF_HOME": str(root / "home"), "REGDIFF_QUEUE": QUEUE, **FAST,
               "REGDIFF_DATABASE_URL": pg.url, "REGDIFF_BROKER_URL": broker.url, "REGDIFF_MAX_RUNNING_RUNS": "100",
               "REGDIFF_LEASE_SECONDS": str(args.lease), "REGDIFF_REQUEUE_AFTER_SECONDS": str(4 * args.lease)}
        service = Service("postgres-redis", root / "home", env).start()
        chaos = Chaos(service, pg, broker, rng)
        with httpx.Client(base_url=service.url, timeout=30) as client:
            keys = [f"chaos-{i}" for i in range(args.runs)]
            post = [lambda i=i, k=k: client.post("/v1/runs", json=spec(i, args.steps), headers={"Idempotency-Key": k})
                    for i, k in enumerate(keys)]
            ids = [p().raise_for_status().json()["id"] for p in post]
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(2, 6))
                chaos.inject(rng.choice(FAULTS))
            replayed = [p().json().get("id") for p in post]  # retried submissions make no new runs
        faults_ended = time.monotonic()
        waited = wait_all(pg.url, ids, args.timeout, args.stall)
        waited_s = time.monotonic() - faults_ended
        figures = measure(pg.url, ids, replayed, waited)
        messages = broker.messages()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave servers behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if chaos is not None:
            chaos.stop_workers()
        if service is not None:
            service.stop()
        broker.stop()
        pg.stop()
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"chaos: {args.runs} runs of {args.steps} steps, 3 workers, lease {args.lease:g} s, "
          f"{args.duration:g} s of faults (seed {args.seed}), "
          f"wall {time.monotonic() - started:.0f} s")
    print(f"faults: {dict(chaos.done)}")
    print(f"wait after the faults: {waited_s:.0f} s ({waited})")
    print(f"runs lost: {len(figures['lost'])} {figures['lost'] or ''}")
    print(f"runs unfinished when the wait ended: {len(figures['unfinished'])} {figures['unfinished'] or ''}")
    print(f"runs duplicated: {figures['duplicated']}")
    print(f"runs trained by two workers at once (writes of both accepted): {len(figures['two_at_once'])}"
          f" {figures['two_at_once'] or ''}")
    print(f"stale writes accepted: {figures['stale_writes']} ({figures['stale_detail']})")
    print(f"runs failed by infrastructure: {len(figures['failed'])} {figures['failed'] or ''}")
    print(f"attempts spent (attempts: runs): {dict(sorted(figures['attempts'].items()))}")
    print(f"broker messages left: {messages[0]} waiting, {messages[1]} unacked (held by killed workers)")
    bad = (figures["lost"] or figures["unfinished"] or figures["duplicated"] or figures["two_at_once"]
           or figures["stale_writes"] or messages[0])
    return 1 if bad or figures["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
