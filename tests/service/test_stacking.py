"""Sweeps trained as one stacked model by the live worker (REGDIFF_SWEEP_BATCHING=on, as on CUDA):
each point is still its own run, with its own outcome. Storage does not change what is checked
here, so one backend (PostgreSQL + Redis) runs it; tests/models/test_stacked.py checks the numbers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TINY_RUN, _start
from tests.live import Service, wait_for, wait_until

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stacking_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # each point of a stack is one of its tenant's running runs: room for eight
    yield from _start("postgres-redis", tmp_path_factory, REGDIFF_SWEEP_BATCHING="on", REGDIFF_MAX_RUNNING_RUNS="16")


@pytest.fixture(scope="module")
def stacking(stacking_service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stacking_service.url, timeout=30, headers={"X-Regdiff-Client": "1"}) as client:
        yield client


def events(client: httpx.Client, run_id: str, kind: str) -> list[dict]:
    data = client.get(f"/v1/runs/{run_id}/events", params={"limit": 500}).json()["data"]
    return [event for event in data if event["type"] == kind]


def test_a_sweeps_points_train_as_one_stack_and_end_on_their_own(stacking):
    """Eight points in one stack: three succeed and two fail on a non-finite penalty (lambda 1e6 x
    weight 1e38) while the three long ones train on, then those are cancelled; every outcome is its
    own run's, recorded when the point leaves the stack."""
    base = {**TINY_RUN, "reg_schedule": {"t_max": 1000}, "train": {"batch_size": 8, "log_every": 5}}
    vary = {"lambda": [0, 1e6], "regularizer.0.weight": [1e-6, 1e38], "train.steps": [20, 100_000]}
    created = stacking.post("/v1/sweeps", json={"base": base, "vary": vary})
    assert created.status_code == 201, created.text
    ids = {tuple(r["values"].values()): r["id"] for r in created.json()["runs"]}
    assert len(ids) == 8, "no baseline added: lambda 0 is a grid point"
    nan = {ids[1e6, 1e38, 20], ids[1e6, 1e38, 100_000]}
    long = {run_id for key, run_id in ids.items() if key[2] == 100_000} - nan
    short = set(ids.values()) - nan - long

    early = {run_id: wait_for(stacking, run_id) for run_id in short | nan}  # while the long points train on
    assert {stacking.get(f"/v1/runs/{run_id}").json()["status"] for run_id in long} == {"running"}
    for run_id in long:
        wait_until(lambda run_id=run_id: stacking.get(f"/v1/runs/{run_id}").json()["step"] >= 10, timeout=180)
        assert stacking.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    done = early | {run_id: wait_for(stacking, run_id) for run_id in long}
    for run_id in short:
        assert done[run_id]["status"] == "succeeded", done[run_id]["error"]
        assert done[run_id]["step"] == 20
    assert done[ids[1e6, 1e-6, 20]]["metrics"]["penalty_raw"] > 0
    assert {done[run_id]["status"] for run_id in long} == {"cancelled"}
    for failed in nan:
        assert done[failed]["status"] == "failed" and "non-finite penalty loss at step 0" in done[failed]["error"]

    for run_id in ids.values():
        (stacked,) = events(stacking, run_id, "stacked")
        assert sorted(stacked["data"]["runs"]) == sorted(set(ids.values()) - {run_id}), stacked
    ok = ids[1e6, 1e-6, 20]
    checkpoints = stacking.get(f"/v1/runs/{ok}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints if c["is_final"]] == [20]
    preview = stacking.get(f"/v1/runs/{ok}/samples.png")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    sampled = stacking.post(f"/v1/runs/{ok}/samples", json={"n": 2, "steps": 5})  # an ordinary run's checkpoint
    assert sampled.status_code == 202, sampled.text
    assert wait_until(lambda: stacking.get(f"/v1/samples/{sampled.json()['id']}").json()["status"] == "succeeded")


def test_a_sweep_whose_points_cannot_share_a_stack_trains_them_alone_and_says_why(stacking):
    body = {"base": {**TINY_RUN, "train": {"steps": 10, "log_every": 5}}, "vary": {"train.batch_size": [8, 16]}}
    created = stacking.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    for run in created.json()["runs"]:
        assert wait_for(stacking, run["id"])["status"] == "succeeded"
        assert not events(stacking, run["id"], "stacked")
        (alone,) = events(stacking, run["id"], "unstacked")
        assert "points differ in train.batch_size" in alone["message"], alone


def test_a_stack_given_back_by_a_warm_shutdown_resumes_as_a_stack(stacking_service, stacking):
    """SIGTERM mid-stack: every point checkpoints its own state and goes back to the queue; the next
    worker restacks them (same resume step) and each finishes without spending an attempt."""
    base = {**TINY_RUN, "train": {"steps": 60, "batch_size": 8, "log_every": 1}, "checkpoint_every": 1000}
    created = stacking.post("/v1/sweeps", json={"base": base, "vary": {"lambda": [0, 1]}})
    assert created.status_code == 201, created.text
    ids = [run["id"] for run in created.json()["runs"]]
    wait_until(lambda: all(stacking.get(f"/v1/runs/{run_id}").json()["step"] > 0 for run_id in ids), timeout=180)
    assert stacking_service.stop_worker() == 0
    saved = {run_id: stacking.get(f"/v1/runs/{run_id}/checkpoints").json()["data"] for run_id in ids}
    assert all(stacking.get(f"/v1/runs/{run_id}").json()["status"] == "queued" for run_id in ids)
    assert len({checkpoints[0]["step"] for checkpoints in saved.values()}) == 1, "one stack, one step"
    stacking_service.start_worker()

    for run_id in ids:
        done = wait_for(stacking, run_id, timeout=600)
        assert done["status"] == "succeeded", done["error"]
        assert done["step"] == 60 and done["attempts"] == 1
        assert [e["data"]["step"] for e in events(stacking, run_id, "resumed")] == [saved[run_id][0]["step"]]
        assert len(events(stacking, run_id, "stacked")) == 2, "stacked before the shutdown and after it"
