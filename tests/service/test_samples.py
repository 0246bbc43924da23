"""Samples on demand, export to diffusers and fine-tuning, through the api and a live worker."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_RUN
from tests.live import wait_for, wait_until

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def finished_run(service):
    import httpx

    with httpx.Client(base_url=service.url, timeout=30) as c:
        run = wait_for(c, c.post("/v1/runs", json=TINY_RUN).json()["id"])
    assert run["status"] == "succeeded", run["error"]
    return run


def _sample(client, run_id: str, **params) -> dict:
    job = client.post(f"/v1/runs/{run_id}/samples", json=params)
    assert job.status_code == 202, job.text
    return wait_until(lambda: (j := client.get(f"/v1/samples/{job.json()['id']}").json())["status"]
                      in ("succeeded", "failed") and j)


def _array(client, job_id: str) -> np.ndarray:
    with np.load(io.BytesIO(client.get(f"/v1/samples/{job_id}/samples.npz").content), allow_pickle=False) as f:
        return f["images"]


def test_same_seed_and_checkpoint_give_the_same_images(client, finished_run):
    ckpt = client.get(f"/v1/runs/{finished_run['id']}/checkpoints").json()["data"][-1]["id"]
    a = _sample(client, finished_run["id"], n=3, sampler="ddim", steps=8, seed=7, checkpoint=ckpt)
    b = _sample(client, finished_run["id"], n=3, sampler="ddim", steps=8, seed=7, checkpoint=ckpt)
    c = _sample(client, finished_run["id"], n=3, sampler="dpm_solver", steps=8, seed=8)
    assert a["status"] == b["status"] == c["status"] == "succeeded"
    images_a = _array(client, a["id"])
    assert images_a.shape == (3, 8, 8) and images_a.dtype == np.uint8
    np.testing.assert_array_equal(images_a, _array(client, b["id"]))
    assert not np.array_equal(images_a, _array(client, c["id"]))

    one = Image.open(io.BytesIO(client.get(f"/v1/samples/{a['id']}/images/2.png").content))
    np.testing.assert_array_equal(np.asarray(one), images_a[2])
    assert client.get(f"/v1/samples/{a['id']}/images/3.png").status_code == 404
    assert client.get(f"/v1/samples/{a['id']}/grid.png").headers["content-type"] == "image/png"


def test_sample_request_limits(client, finished_run):
    too_many = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"n": 100_000})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "n"
    bad = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"sampler": "euler"})
    assert bad.status_code == 422 and "ddim" in bad.json()["detail"]
    missing = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"checkpoint": "ckpt_nope"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "checkpoint"
    for guidance, field in (({"regularizer": "tv", "scale": -1}, "guidance.scale"),
                            ({"regularizer": "blur", "scale": 1}, "guidance.regularizer.0.name"),
                            ({"regularizer": "tv", "scale": 1, "t_max": 4000}, "guidance.t_max")):
        bad = client.post(f"/v1/runs/{finished_run['id']}/samples", json={"guidance": guidance})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == field, bad.text


def test_guidance_reaches_the_sampler(client, finished_run):
    """Scale 0 reproduces the unguided images; a TV guidance changes them (the measurement of its
    effect lives in tests/models/test_samplers.py)."""
    params = {"n": 3, "sampler": "ddim", "steps": 5, "seed": 3}
    plain, zero, guided = (_sample(client, finished_run["id"], **params, **extra) for extra in (
        {}, {"guidance": {"regularizer": "tv", "scale": 0}}, {"guidance": {"regularizer": "tv", "scale": 5}}))
    assert plain["status"] == zero["status"] == guided["status"] == "succeeded", guided
    np.testing.assert_array_equal(_array(client, plain["id"]), _array(client, zero["id"]))
    assert not np.array_equal(_array(client, plain["id"]), _array(client, guided["id"]))


def test_export_loads_in_diffusers_and_samples(client, finished_run, tmp_path):
    from diffusers import DDPMPipeline

    response = client.get(f"/v1/runs/{finished_run['id']}/export")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(tmp_path)
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape[:3] == (2, 8, 8) and np.isfinite(images).all()


def test_fine_tune_from_another_runs_checkpoint(client, finished_run):
    ckpt = client.get(f"/v1/runs/{finished_run['id']}/checkpoints").json()["data"][-1]["id"]
    tuned = client.post("/v1/runs", json={**TINY_RUN, "lambda": 1.0, "init_from": ckpt})
    assert tuned.status_code == 201
    assert wait_for(client, tuned.json()["id"])["status"] == "succeeded"
    missing = client.post("/v1/runs", json={**TINY_RUN, "init_from": "ckpt_nope"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "init_from"
    other_model = client.post("/v1/runs", json={**TINY_RUN, "init_from": ckpt, "model": {"prediction": "sample"}})
    assert other_model.status_code == 422 and other_model.json()["errors"][0]["field"] == "init_from"
    assert "prediction (checkpoint" in other_model.json()["errors"][0]["message"]


def test_idempotency_key_replays_a_sample_request_and_refuses_another_body(client, finished_run):
    url, key = f"/v1/runs/{finished_run['id']}/samples", {"Idempotency-Key": "draw-1"}
    first = client.post(url, json={"n": 2, "steps": 4, "seed": 1}, headers=key)
    again = client.post(url, json={"n": 2, "steps": 4, "seed": 1}, headers=key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post(url, json={"n": 2, "steps": 4, "seed": 2}, headers=key)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert wait_until(lambda: client.get(f"/v1/samples/{first.json()['id']}").json()["status"] == "succeeded")
