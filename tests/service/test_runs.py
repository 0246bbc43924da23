"""End to end through HTTP: the api, a live Celery worker, a real database and broker."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import TINY_RUN
from tests.live import wait_for

pytestmark = pytest.mark.service


def test_tiny_run_trains_to_a_sample_grid(client):
    created = client.post("/v1/runs", json=TINY_RUN)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "queued" and run["total_steps"] == 20

    done = wait_for(client, run["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 20 and done["progress"] == 1.0
    assert {"diffusion_loss", "penalty_raw", "penalty_weighted", "loss"} <= set(done["metrics"])
    assert done["started_at"] and done["finished_at"]

    png = client.get(f"/v1/runs/{run['id']}/samples.png", params={"scale": 1})  # the stored 1:1 grid
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(png.content))
    grid.load()
    assert grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 4 digits of 8x8 in a 2x2 grid, 2 px padding

    ckpts = client.get(f"/v1/runs/{run['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in ckpts][-1] == 20 and ckpts[-1]["is_final"]
    series = client.get(f"/v1/runs/{run['id']}/metrics").json()["series"]
    assert series["diffusion_loss"] and series["penalty_raw"]
    listed = client.get("/v1/runs", params={"status": "succeeded"}).json()["data"]
    assert run["id"] in [r["id"] for r in listed]


BAD = [
    ({"dataset": "imagenet"}, "dataset", "digits"),
    ({"regularizer": "blur"}, "regularizer.0.name", "tv"),
    ({"lambda": "lots"}, "lambda", "number"),
    ({"lambda": -0.5}, "lambda", "greater than or equal to 0"),
    ({"train": {"steps": 0}}, "train.steps", "greater than or equal to 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "greater than or equal to 1"),
    ({"train": {"batch_size": 10**9}}, "train.batch_size", "less than or equal to 4096"),
    ({"model": {"preset": "unet-m"}}, "model.preset", "unet-xs"),
    ({"model": {"prediction": "noise"}}, "model.prediction", "'epsilon', 'sample' or 'v_prediction'"),
    ({"estimator": {"kind": "ddim", "steps": 2, "grad_steps": 3}}, "estimator.grad_steps", "<= steps"),
    ({"reg_schedule": {"t_min": 300, "t_max": 200}}, "reg_schedule.t_min", "< t_max"),
    ({"regularizer": [{"name": "tv", "params": {"norm": "l3"}}]}, "regularizer.0", "'l1' or 'l2'"),
    ({"colour": "blue"}, "colour", "unknown field"),
]


@pytest.mark.parametrize(("patch", "field", "hint"), BAD, ids=[b[1] + ":" + str(i) for i, b in enumerate(BAD)])
def test_bad_spec_is_a_clear_422_and_queues_nothing(client, patch, field, hint):
    before = len(client.get("/v1/runs", params={"limit": 100}).json()["data"])
    response = client.post("/v1/runs", json={**TINY_RUN, **patch})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert field in [e["field"] for e in problem["errors"]], problem
    assert hint in problem["detail"], problem
    assert len(client.get("/v1/runs", params={"limit": 100}).json()["data"]) == before


def test_non_finite_lambda_is_rejected(client):
    body = '{"dataset": "digits", "lambda": NaN}'
    response = client.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "lambda"


def test_unknown_run_is_a_404_problem(client):
    for path in ("/v1/runs/run_nope", "/v1/runs/run_nope/samples.png", "/v1/samples/smp_nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert "run_nope" in response.json()["detail"] or "smp_nope" in response.json()["detail"]


def test_an_unknown_list_cursor_is_a_422_naming_after(client):
    response = client.get("/v1/runs", params={"after": "run_nosuchrun"})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["after"]
    assert "run_nosuchrun" in response.json()["detail"]


def test_the_event_stream_sets_retry_and_sends_the_final_status_before_end(client):
    run_id = client.post("/v1/runs", json=TINY_RUN).json()["id"]
    lines: list[str] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"},
                       timeout=300) as stream:  # followed live, from the queued event to the end
        for line in stream.iter_lines():
            lines.append(line)
            if line == "event: end":
                break
    assert lines[0].startswith("retry: ") and int(lines[0].split()[1]) > 0
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [line for line in lines if line.startswith("data: ")]
    assert kinds[-1] == "end" and kinds[-2] == "status"
    assert '"status":"succeeded"' in datas[-1].replace(" ", "")  # read up to "event: end", before its data
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 409  # succeeded: nothing to cancel


def test_checkpoint_every_below_the_server_minimum_is_a_422_naming_it(client):
    refused = client.post("/v1/runs", json={**TINY_RUN, "checkpoint_every": 1})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["checkpoint_every"]
    assert "REGDIFF_MIN_CHECKPOINT_EVERY" in refused.json()["detail"]
