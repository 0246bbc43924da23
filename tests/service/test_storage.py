"""Bounded storage through HTTP, on the live stack: DELETE of datasets, sweeps and sample jobs,
retention when a run ends, streamed downloads byte for byte, and the per-tenant byte quota."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, select

from store.tables import Checkpoint, SampleJob
from tests.conftest import TINY_RUN, _start
from tests.live import Service, wait_for, wait_until
from tests.service.test_datasets import npz_bytes, upload

pytestmark = pytest.mark.service
PROBLEM = "application/problem+json"
LONG = {**TINY_RUN, "train": {"steps": 100_000, "batch_size": 8, "log_every": 5}}


def stored(service: Service, query):
    """One value straight from the service's database (what a download must give back)."""
    url = service.env.get("REGDIFF_DATABASE_URL") or f"sqlite:///{(service.home / 'regdiff.db').resolve()}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def finished_run(service) -> dict:
    with httpx.Client(base_url=service.url, timeout=30) as c:
        run = wait_for(c, c.post("/v1/runs", json=TINY_RUN).json()["id"])
    assert run["status"] == "succeeded", run["error"]
    return run


def test_a_finished_run_keeps_its_final_checkpoint_alone(client, finished_run):
    # TINY_RUN: 20 steps, a checkpoint every 10; the one at step 10 is gone once the run ended
    ckpts = client.get(f"/v1/runs/{finished_run['id']}/checkpoints").json()["data"]
    assert [(c["step"], c["is_final"]) for c in ckpts] == [(20, True)]


def test_a_cancelled_run_keeps_its_newest_checkpoint_alone(client):
    spec = {**LONG, "checkpoint_every": 5}
    run_id = client.post("/v1/runs", json=spec).json()["id"]
    wait_until(lambda: len(client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"]) >= 2, timeout=180)
    client.post(f"/v1/runs/{run_id}/cancel")
    assert wait_for(client, run_id)["status"] == "cancelled"
    ckpts = client.get(f"/v1/runs/{run_id}/checkpoints").json()["data"]
    assert len(ckpts) == 1 and not ckpts[0]["is_final"] and ckpts[0]["step"] >= 10


def test_downloads_stream_the_stored_bytes(service, client, finished_run):
    ckpt = client.get(f"/v1/runs/{finished_run['id']}/checkpoints").json()["data"][-1]
    download = client.get(f"/v1/checkpoints/{ckpt['id']}")
    assert download.status_code == 200 and int(download.headers["content-length"]) == ckpt["size"]
    assert download.content == stored(service, select(Checkpoint.data).where(Checkpoint.id == ckpt["id"]))
    assert ckpt["size"] > 1 << 20  # more than one chunk (store/blobs.py CHUNK_BYTES)

    job = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"n": 3, "steps": 4}).json()
    wait_until(lambda: client.get(f"/v1/samples/{job['id']}").json()["status"] == "succeeded")
    npz = client.get(f"/v1/samples/{job['id']}/samples.npz")
    assert npz.content == stored(service, select(SampleJob.images_npz).where(SampleJob.id == job["id"]))
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
        assert f["images"].shape[0] == 3


def test_delete_a_sample_job(service, client, finished_run, other_tenant):
    job = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"n": 2, "steps": 4}).json()
    assert client.delete(f"/v1/samples/{job['id']}", headers=other_tenant).status_code == 404
    assert client.delete(f"/v1/samples/{job['id']}").status_code == 204  # queued, running or done alike
    assert client.get(f"/v1/samples/{job['id']}").status_code == 404
    assert client.delete(f"/v1/samples/{job['id']}").status_code == 404
    preview = stored(service, select(SampleJob.id).where(SampleJob.run_id == finished_run["id"],
                                                          SampleJob.kind == "preview"))
    refused = client.delete(f"/v1/samples/{preview}")
    assert refused.status_code == 409 and f"DELETE /v1/runs/{finished_run['id']}" in refused.json()["detail"]
    assert client.get(f"/v1/runs/{finished_run['id']}/samples.png").status_code == 200


def test_delete_a_dataset_refused_while_a_run_trains_on_it(client, other_tenant):
    dataset = upload(client, "for-delete.npz", npz_bytes(n=40, offset=900)).json()
    run_id = client.post("/v1/runs", json={**LONG, "dataset": dataset["dataset"]}).json()["id"]
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=other_tenant).status_code == 404
    refused = client.delete(f"/v1/datasets/{dataset['id']}")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    assert run_id in refused.json()["detail"] and refused.json()["errors"][0]["field"] == "dataset_id"
    client.post(f"/v1/runs/{run_id}/cancel")
    assert wait_for(client, run_id)["status"] == "cancelled"
    assert client.delete(f"/v1/datasets/{dataset['dataset']}").status_code == 204  # upload:<id> works too
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    assert dataset["id"] not in [d["id"] for d in client.get("/v1/datasets").json()["data"]]
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 404
    builtin = client.delete("/v1/datasets/digits")
    assert builtin.status_code == 409 and "built-in" in builtin.json()["detail"]
    gone = client.post("/v1/runs", json={**TINY_RUN, "dataset": dataset["dataset"]})
    assert gone.status_code == 422 and gone.json()["errors"][0]["field"] == "dataset"


def test_delete_a_sweep_stops_and_removes_its_runs(client, other_tenant):
    sweep = client.post("/v1/sweeps", json={"base": LONG, "vary": {"lambda": [0.0, 0.5]}}).json()
    ids = [r["id"] for r in sweep["runs"]]
    wait_until(lambda: any(client.get(f"/v1/runs/{i}").json()["step"] > 0 for i in ids), timeout=180)
    assert client.delete(f"/v1/sweeps/{sweep['id']}", headers=other_tenant).status_code == 404
    assert client.delete(f"/v1/sweeps/{sweep['id']}").status_code == 204
    assert client.get(f"/v1/sweeps/{sweep['id']}").status_code == 404
    assert all(client.get(f"/v1/runs/{i}").status_code == 404 for i in ids)
    assert client.delete(f"/v1/sweeps/{sweep['id']}").status_code == 404
    # the worker dropped the deleted run at its next beat: the next run gets trained
    assert wait_for(client, client.post("/v1/runs", json=TINY_RUN).json()["id"])["status"] == "succeeded"


QUOTA = 3000  # bytes: one small upload (~1.7 kB canonical) fits, two do not, a checkpoint (~10 MiB) alone passes it


@pytest.fixture(scope="module")
def quota_client(tmp_path_factory) -> Iterator[httpx.Client]:
    """An embedded stack of its own with a tiny REGDIFF_TENANT_BYTE_QUOTA."""
    for service in _start("embedded", tmp_path_factory, REGDIFF_TENANT_BYTE_QUOTA=str(QUOTA)):
        with httpx.Client(base_url=service.url, timeout=30, headers={"X-Regdiff-Client": "1"}) as c:
            yield c


def _figures(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert response.headers["content-type"] == PROBLEM and body["code"] == code and body["limit_bytes"] == QUOTA
    assert f"{QUOTA:,}" in body["detail"] and "REGDIFF_TENANT_BYTE_QUOTA" in body["detail"]
    return body


def test_the_byte_quota_refuses_new_work_with_the_figures_until_space_is_freed(quota_client):
    client = quota_client
    alone = _figures(upload(client, "big.npz", npz_bytes(n=200)), 413, "larger-than-storage-quota")
    assert alone["request_bytes"] > QUOTA and alone["errors"][0]["field"] == "file"
    first = upload(client, "a.npz", npz_bytes(n=48, offset=0))
    assert first.status_code == 201, first.text
    used = first.json()["size_bytes"]
    second = _figures(upload(client, "b.npz", npz_bytes(n=48, offset=100)), 429, "storage-quota-exceeded")
    assert second["used_bytes"] == used and used < QUOTA < used + second["request_bytes"]
    assert upload(client, "a.npz", npz_bytes(n=48, offset=0)).status_code == 200  # a repeat stores nothing

    run = wait_for(client, client.post("/v1/runs", json=TINY_RUN).json()["id"])  # under the quota: accepted
    assert run["status"] == "succeeded", run["error"]  # and it finished past it
    full = _figures(client.post("/v1/runs", json=TINY_RUN), 429, "storage-quota-exceeded")
    assert full["used_bytes"] > QUOTA and full["request_bytes"] == 0
    _figures(client.post("/v1/sweeps", json={"base": TINY_RUN, "vary": {"lambda": [0.0, 0.5]}}), 429,
             "storage-quota-exceeded")
    _figures(client.post(f"/v1/runs/{run['id']}/samples", json={"n": 2}), 429, "storage-quota-exceeded")

    assert client.delete(f"/v1/runs/{run['id']}").status_code == 204  # room again
    again = client.post("/v1/runs", json={**TINY_RUN, "train": {**TINY_RUN["train"], "steps": 5}})
    assert again.status_code == 201, again.text
