"""Runs survive crashes and lost messages: the database is the truth, the broker a wake-up."""

from __future__ import annotations

import os
import subprocess
import threading

import httpx
import pytest

from tests.conftest import TINY_RUN
from tests.live import purge_broker, wait_for, wait_until

pytestmark = pytest.mark.service

LONG = {**TINY_RUN, "train": {"steps": 100_000, "batch_size": 8, "log_every": 5}}


def metric_steps_rise_within_each_claim(events: list[dict]) -> bool:
    """Each claim's metric steps rise strictly from the checkpoint step it resumed from. A resume
    re-trains the steps after its checkpoint and writes them again (the new owner's writes, correct);
    a step written twice by one owner, or by a stale one, breaks the rise (bench/chaos.py counts it)."""
    last = 0
    for event in events:
        if event["type"] == "status" and (event["data"] or {}).get("status") == "running":
            last = event["data"]["resume_step"]
        elif event["type"] == "metrics":
            if event["data"]["step"] <= last:
                return False
            last = event["data"]["step"]
    return True


def test_killed_worker_resumes_from_its_checkpoint(service, client):
    spec = {**TINY_RUN, "train": {"steps": 240, "batch_size": 16, "log_every": 5}, "checkpoint_every": 40}
    run_id = client.post("/v1/runs", json=spec).json()["id"]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"], timeout=180)
    step_at_kill = client.get(f"/v1/runs/{run_id}").json()["step"]
    service.kill_worker()
    service.start_worker()

    done = wait_for(client, run_id)
    assert done["status"] == "succeeded", done["error"]
    # The claim that was killed got past its checkpoint (progress), so it spent no attempt.
    assert done["step"] == 240 and done["attempts"] == 1
    assert step_at_kill < 240
    events = client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["data"]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["step"] % 40 == 0
    assert metric_steps_rise_within_each_claim(events)
    assert sum(1 for r in client.get("/v1/runs", params={"limit": 100}).json()["data"] if r["id"] == run_id) == 1


def test_sigterm_gives_the_run_back_and_it_resumes_without_spending_an_attempt(service, client):
    spec = {**TINY_RUN, "train": {"steps": 12, "batch_size": 8, "log_every": 1}, "checkpoint_every": 1000}
    run_id = client.post("/v1/runs", json=spec).json()["id"]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}").json()["step"] > 0, timeout=180)
    assert service.stop_worker() == 0  # a deploy: the worker checkpoints at its next step and exits
    back = client.get(f"/v1/runs/{run_id}").json()
    saved = client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"]
    assert back["status"] == "queued" and len(saved) == 1
    service.start_worker()

    done = wait_for(client, run_id, timeout=600)  # a safety net on a loaded machine, not a timing claim
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 12 and done["attempts"] == 1
    events = client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["data"]
    assert [e["data"]["step"] for e in events if e["type"] == "resumed"] == [saved[0]["step"]]
    assert metric_steps_rise_within_each_claim(events)


@pytest.mark.skipif(os.environ.get("REGDIFF_TEST_PG_RESTART") != "1",
                    reason="restarts the machine's PostgreSQL, which breaks any other test run against it at the"
                    " time; .ci/run sets REGDIFF_TEST_PG_RESTART=1")
def test_a_postgresql_restart_mid_run_costs_no_attempt(service, client):
    if service.backend != "postgres-redis":
        pytest.skip("restarts PostgreSQL")
    spec = {**TINY_RUN, "train": {"steps": 120, "batch_size": 16, "log_every": 5}, "checkpoint_every": 20}
    run_id = client.post("/v1/runs", json=spec).json()["id"]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"], timeout=180)
    step_at_restart = client.get(f"/v1/runs/{run_id}").json()["step"]
    (version,) = os.listdir("/etc/postgresql")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=120)

    done = wait_for(client, run_id)
    assert done["status"] == "succeeded", done["error"]
    assert step_at_restart < 120 and done["step"] == 120 and done["attempts"] == 1


def test_lost_messages_are_brought_back_by_the_reconciler(service, client):
    service.kill_worker()
    ids = [client.post("/v1/runs", json=TINY_RUN).json()["id"] for _ in range(3)]
    purge_broker(service)
    service.start_worker()
    for run_id in ids:
        assert wait_for(client, run_id)["status"] == "succeeded"


def test_cancel_mid_run(client):
    run_id = client.post("/v1/runs", json=LONG).json()["id"]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}").json()["step"] > 0)
    cancelling = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] in ("cancelling", "cancelled")
    done = wait_for(client, run_id)
    assert done["status"] == "cancelled" and 0 < done["step"] < 100_000
    again = client.post(f"/v1/runs/{run_id}/cancel")  # a retry after a timeout: the run as it is, no 409
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_cancel_before_start_and_delete(client):
    queued = client.post("/v1/runs", json={**LONG, "dataset": "digits"}).json()["id"]
    client.post(f"/v1/runs/{queued}/cancel")
    assert wait_for(client, queued)["status"] == "cancelled"
    assert client.delete(f"/v1/runs/{queued}").status_code == 204
    assert client.get(f"/v1/runs/{queued}").status_code == 404


def test_time_limit_fails_the_run_with_the_reason(client):
    run_id = client.post("/v1/runs", json={**LONG, "time_limit_seconds": 2}).json()["id"]
    done = wait_for(client, run_id)
    assert done["status"] == "failed" and "time limit" in done["error"]


def test_non_finite_loss_fails_naming_step_and_term(client):
    # lambda 1e6 times a term weight of 1e38 overflows float32 at the first step
    spec = {**TINY_RUN, "lambda": 1e6, "regularizer": [{"name": "tv", "weight": 1e38}],
            "reg_schedule": {"t_max": 1000}}
    done = wait_for(client, client.post("/v1/runs", json=spec).json()["id"])
    assert done["status"] == "failed"
    assert "non-finite penalty loss at step 0" in done["error"]
    assert done["error"].startswith("non-finite-loss: ")  # the code first, then the message (worker/errors.py)


def test_concurrent_posts_with_one_idempotency_key_make_one_run(service, client):
    key = {"Idempotency-Key": "same-key-1"}
    results: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=service.url, timeout=30) as c:
            results.append(c.post("/v1/runs", json=TINY_RUN, headers=key))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results].count(201) == 1
    assert len({r.json()["id"] for r in results}) == 1
    other = client.post("/v1/runs", json={**TINY_RUN, "lambda": 0.5}, headers=key)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
