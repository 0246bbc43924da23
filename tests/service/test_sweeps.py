"""Sweeps through HTTP with the live worker: validation before anything is stored, a grid over
dotted paths, cancel, and a tiny lambda sweep on digits evaluated end to end to its report."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from store.sweeps import derive_status, get_path, grid, set_path
from tests.conftest import TINY_RUN
from tests.live import wait_for, wait_until

PROBLEM = "application/problem+json"


# ---- pure helpers (no service) -----------------------------------------------------------------


@pytest.mark.parametrize(("statuses", "expected"), [
    (["queued", "queued"], "queued"),
    (["queued", "running"], "running"),
    (["succeeded", "queued"], "running"),
    (["cancelling", "cancelled"], "running"),
    (["succeeded", "succeeded"], "succeeded"),
    (["cancelled", "cancelled"], "cancelled"),
    (["failed", "cancelled"], "failed"),
    (["succeeded", "failed"], "partially-failed"),
    (["succeeded", "cancelled"], "partially-failed"),
])
def test_sweep_status_is_derived_from_its_runs(statuses, expected):
    assert derive_status(statuses) == expected


def test_dotted_paths_and_grid():
    spec = {"lambda": 0.1, "regularizer": [{"name": "tv", "weight": 1.0}], "estimator": {"kind": "tweedie"}}
    changed = set_path(spec, "regularizer.0.weight", 2.0)
    assert get_path(changed, "regularizer.0.weight") == 2.0 and spec["regularizer"][0]["weight"] == 1.0
    assert get_path(spec, "regularizer.1.weight") is None and get_path(spec, "estimator.nope") is None
    assert grid({"lambda": [0, 1], "estimator.kind": ["tweedie", "ddim"]}) == [
        {"lambda": 0, "estimator.kind": "tweedie"}, {"lambda": 0, "estimator.kind": "ddim"},
        {"lambda": 1, "estimator.kind": "tweedie"}, {"lambda": 1, "estimator.kind": "ddim"},
    ]


# ---- through the service -----------------------------------------------------------------------

BASE = {**TINY_RUN}
BAD = [
    ({"base": {**BASE, "train": {"steps": 0}}, "vary": {"lambda": [0, 1]}}, "base.train.steps", "greater than"),
    ({"base": BASE, "vary": {"lambda": [0, -1]}}, "vary.lambda", "value 1 (-1)"),
    ({"base": BASE, "vary": {"estimator.kind": ["tweedie", "euler"]}}, "vary.estimator.kind", "'tweedie' or 'ddim'"),
    ({"base": BASE, "vary": {"reg_schedule.t_max": [100, 5000]}}, "vary.reg_schedule.t_max", "model.timesteps"),
    ({"base": BASE, "vary": {"regularizer.0.weight": [1, "heavy"]}}, "vary.regularizer.0.weight", "number"),
    ({"base": BASE, "vary": {"regularizer.3.weight": [1]}}, "vary.regularizer.3.weight", "no field"),
    ({"base": BASE, "vary": {"lamda": [0, 1]}}, "vary.lamda", "no field"),
    ({"base": BASE, "vary": {"lambda": []}}, "vary.lambda", "at least one value"),
    ({"base": BASE, "vary": {"lambda": [0, 0.0]}}, "vary.lambda", "twice"),
    ({"base": BASE, "vary": {}}, "vary", "at least one"),
    ({"base": BASE, "vary": {"lambda": list(range(40))}}, "vary", "REGDIFF_MAX_SWEEP_POINTS"),
    ({"base": BASE, "vary": {"dataset": ["mnist-5k", "mnist"], "model.preset": ["unet-s"]}}, "vary.dataset",
     "MNIST/raw"),
    ({"base": BASE, "vary": {"lambda": [1]}, "seeds": []}, "seeds", "at least one"),
    ({"base": BASE, "vary": {"lambda": [1]}, "seeds": [0, 3, 0]}, "seeds", "seed 0 is given twice"),
    ({"base": BASE, "vary": {"lambda": [1]}, "seeds": list(range(9))}, "seeds", "REGDIFF_MAX_SWEEP_SEEDS"),
    ({"base": BASE, "vary": {"lambda": [1]}, "seeds": [-1]}, "seeds", "between 0 and"),
    ({"base": BASE, "vary": {"train.seed": [1, 2]}, "seeds": [0, 1]}, "seeds", "only"),
    ({"base": BASE, "vary": {"lambda": [0.1 * i for i in range(1, 12)]}, "seeds": [0, 1, 2]}, "seeds",
     "(11 points + 1 lambda=0 baseline) x 3 seeds = 36 runs"),
    ({"base": BASE, "vary": {"lambda": [1]}, "max_fcd_increase": -1}, "max_fcd_increase", "greater than"),
]


@pytest.mark.service
@pytest.mark.parametrize(("body", "field", "hint"), BAD, ids=[f"{b[1]}:{i}" for i, b in enumerate(BAD)])
def test_a_bad_sweep_is_a_422_naming_the_field_and_creates_nothing(client, body, field, hint):
    runs_before = len(client.get("/v1/runs", params={"limit": 100}).json()["data"])
    sweeps_before = len(client.get("/v1/sweeps", params={"limit": 100}).json()["data"])
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
    problem = response.json()
    assert field in [e["field"] for e in problem["errors"]], problem
    assert hint in problem["detail"], problem
    assert len(client.get("/v1/runs", params={"limit": 100}).json()["data"]) == runs_before
    assert len(client.get("/v1/sweeps", params={"limit": 100}).json()["data"]) == sweeps_before


@pytest.mark.service
def test_a_grid_sweep_makes_one_run_per_point_and_cancels_whole(client, other_tenant):
    long = {**BASE, "train": {"steps": 100_000, "batch_size": 8, "log_every": 5}}
    body = {"base": long, "vary": {"lambda": [0, 0.5], "estimator.kind": ["tweedie", "ddim"]}}
    created = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["points"] == 4 and sweep["vary"] == {"lambda": [0.0, 0.5], "estimator.kind": ["tweedie", "ddim"]}
    assert [r["values"] for r in sweep["runs"]] == [
        {"lambda": 0.0, "estimator.kind": "tweedie"}, {"lambda": 0.0, "estimator.kind": "ddim"},
        {"lambda": 0.5, "estimator.kind": "tweedie"}, {"lambda": 0.5, "estimator.kind": "ddim"},
    ]
    replay = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
    assert replay.status_code == 200 and replay.json()["id"] == sweep["id"]
    listed = client.get("/v1/runs", params={"sweep_id": sweep["id"], "limit": 100}).json()["data"]
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in sweep["runs"])
    run = client.get(f"/v1/runs/{sweep['runs'][3]['id']}").json()
    assert run["sweep_id"] == sweep["id"] and run["spec"]["estimator"]["kind"] == "ddim" and run["spec"]["lambda"] == 0.5

    for path in ("", "/report", "/report.png"):
        theirs = client.get(f"/v1/sweeps/{sweep['id']}{path}", headers=other_tenant)
        assert theirs.status_code == 404 and theirs.headers["content-type"] == PROBLEM
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=other_tenant).status_code == 404

    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 200
    final = wait_until(lambda: (s := client.get(f"/v1/sweeps/{sweep['id']}").json())["status"] == "cancelled" and s,
                       timeout=60)
    assert final["counts"] == {"cancelled": 4}


@pytest.mark.service
def test_a_tiny_lambda_sweep_end_to_end_to_its_report(client):
    base = {**BASE, "train": {"steps": 10, "batch_size": 16, "log_every": 5},
            "evaluation": {"n_samples": 32, "steps": 10}}
    created = client.post("/v1/sweeps", json={"base": base, "vary": {"lambda": [0, 1]}})
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["status"] == "queued" and [r["values"] for r in sweep["runs"]] == [{"lambda": 0.0}, {"lambda": 1.0}]
    for r in sweep["runs"]:
        done = wait_for(client, r["id"])
        assert done["status"] == "succeeded", done["error"]
        ev = done["evaluation"]
        assert ev["n_samples"] == 32 and ev["fcd"] >= 0 and 0 < ev["confidence"] <= 1, ev
        assert ev["penalty"]["samples"] > 0 and ev["penalty"]["real"] > 0 and "tv" in ev["penalties"]
        assert ev["classifier"]["key"].startswith("digits:")
    cached = [client.get(f"/v1/runs/{r['id']}").json()["evaluation"]["classifier"]["cached"] for r in sweep["runs"]]
    assert True in cached, "the classifier is trained once per dataset, then read from the cache"
    assert client.get(f"/v1/sweeps/{sweep['id']}").json()["status"] == "succeeded"

    report = client.get(f"/v1/sweeps/{sweep['id']}/report").json()
    assert report["keys"] == ["lambda"] and len(report["rows"]) == 2
    assert [row["lambda"] for row in report["rows"]] == [0.0, 1.0]
    for row in report["rows"]:
        for key in ("fcd", "confidence", "penalty_samples", "penalty_real", "seconds"):
            assert isinstance(row[key], float), (key, row)
    assert report["reference"]["penalty_real"] == report["rows"][0]["penalty_real"]
    assert report["markdown"].count("\n| run_") == 2

    png = client.get(f"/v1/sweeps/{sweep['id']}/report.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    image.load()
    assert image.size[0] > 400 and image.size[1] > 300


def test_an_unknown_sweep_cursor_is_a_422_naming_after(client):
    response = client.get("/v1/sweeps", params={"after": "swp_nosuchsweep"})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["after"]
    assert "swp_nosuchsweep" in response.json()["detail"]
