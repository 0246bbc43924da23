"""The `regdiff` command line against the scripted server: exit codes, stderr, --json, flags -> spec."""

from __future__ import annotations

import json

import pytest
from regdiff_client.cli import app
from typer.testing import CliRunner

from tests.client.fake_api import Reply, problem, run_json


@pytest.fixture
def regdiff(api):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["--url", api.url, *args])

    return invoke


def test_get_prints_a_table_and_json(api, regdiff):
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "running", step=10)))
    table = regdiff("runs", "get", "r1")
    assert table.exit_code == 0, table.output
    assert "running" in table.stdout and "10/20" in table.stdout
    as_json = regdiff("runs", "get", "r1", "--json")
    assert json.loads(as_json.stdout)["id"] == "r1"


def test_api_error_exits_1_with_the_problem_on_stderr(api, regdiff):
    api.on("GET", "/v1/runs/nope", problem(404, "Not Found", "run nope does not exist"))
    result = regdiff("runs", "get", "nope")
    assert result.exit_code == 1
    assert "run nope does not exist" in result.stderr and result.stdout == ""


def test_validation_error_names_the_field(api, regdiff):
    errors = [{"field": "train.steps", "message": "Input should be greater than or equal to 1"}]
    api.on("POST", "/v1/runs", problem(422, "Unprocessable Entity", "invalid run spec", errors))
    result = regdiff("runs", "create", "--steps", "0")
    assert result.exit_code == 1
    assert "train.steps: Input should be greater than or equal to 1" in result.stderr


def test_usage_errors_exit_2(regdiff, tmp_path):
    not_json = tmp_path / "spec.json"
    not_json.write_text("{dataset: digits")
    assert regdiff("runs", "create", "--spec", str(not_json)).exit_code == 2
    assert regdiff("runs", "get").exit_code == 2
    assert regdiff("runs", "create", "--steps", "many").exit_code == 2
    assert regdiff("sweeps", "create", "--vary", "lambda").exit_code == 2


def test_create_builds_the_spec_from_a_file_and_flags(api, regdiff, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": "digits", "train": {"steps": 100, "batch_size": 8}, "lambda": 1}))
    api.on("POST", "/v1/runs", Reply(201, json=run_json("r9")))
    result = regdiff(
        "runs",
        "create",
        "--spec",
        str(spec),
        "--lambda",
        "0.1",
        "--steps",
        "20",
        "--preset",
        "unet-xs",
        "--regularizer",
        "tv",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == "r9"
    assert api.requests("POST", "/v1/runs")[0].json() == {
        "dataset": "digits",
        "train": {"steps": 20, "batch_size": 8},
        "lambda": 0.1,
        "model": {"preset": "unet-xs"},
        "regularizer": [{"name": "tv"}],
    }


def test_create_wait_exits_3_when_the_run_fails(api, regdiff):
    api.on("POST", "/v1/runs", Reply(201, json=run_json("r1")))
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "failed", error="NaN loss")))
    result = regdiff("runs", "create", "--dataset", "digits", "--wait", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["status"] == "failed"
    assert "NaN loss" in result.stderr


def test_watch_succeeds_and_list_json_parses(api, regdiff):
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "succeeded", step=20)))
    api.on("GET", "/v1/runs", Reply(json={"data": [run_json("r1"), run_json("r2")], "has_more": False}))
    assert regdiff("runs", "watch", "r1").exit_code == 0
    listed = regdiff("runs", "list", "--json", "--limit", "1")
    assert [r["id"] for r in json.loads(listed.stdout)] == ["r1"]
    table = regdiff("runs", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "STEP"] and len(table) == 3


def test_samples_writes_the_grid(api, regdiff, tmp_path):
    api.on("POST", "/v1/runs/r1/samples", Reply(202, json={"id": "smp_1", "status": "queued"}))
    api.on("GET", "/v1/samples/smp_1", Reply(json={"id": "smp_1", "status": "succeeded"}))
    api.on("GET", "/v1/samples/smp_1/grid.png", Reply(body=b"\x89PNG fake"))
    out = tmp_path / "grid.png"
    result = regdiff("samples", "r1", "-o", str(out), "--n", "4", "--steps", "10", "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"\x89PNG fake" and json.loads(result.stdout)["path"] == str(out)
    assert api.requests("POST", "/v1/runs/r1/samples")[0].json() == {"n": 4, "steps": 10, "seed": 3}


def test_sweeps_and_datasets(api, regdiff, tmp_path):
    api.on("POST", "/v1/sweeps", Reply(201, json={"id": "sw_1", "run_ids": ["a", "b", "c"]}))
    api.on(
        "GET", "/v1/sweeps/sw_1/report", Reply(json={"sweep": "sw_1", "runs": [{"lambda": 0, "tv": 0.25}]})
    )
    api.on("POST", "/v1/datasets", Reply(201, json={"id": "ds_1"}))
    api.on("GET", "/v1/datasets", Reply(json={"data": [{"id": "ds_1", "name": "mine"}], "has_more": False}))
    created = regdiff("sweeps", "create", "--vary", "lambda=0,0.1,1", "--vary", "regularizer=tv,l1")
    assert created.exit_code == 0 and "3 runs" in created.stdout
    assert api.requests("POST", "/v1/sweeps")[0].json()["vary"] == {
        "lambda": [0, 0.1, 1],
        "regularizer": ["tv", "l1"],
    }
    report = regdiff("sweeps", "report", "sw_1")
    assert "0.25" in report.stdout and "lambda" in report.stdout
    data = tmp_path / "d.npz"
    data.write_bytes(b"npz")
    assert regdiff("datasets", "upload", str(data)).stdout.strip() == "Uploaded ds_1"
    assert json.loads(regdiff("datasets", "list", "--json").stdout)[0]["name"] == "mine"
    # the header a keyless local api asks of a multipart upload (a cross-site page cannot send it)
    assert api.seen and all(seen.headers.get("x-regdiff-client") == "1" for seen in api.seen)


def test_unreachable_server_exits_1(api):
    url = api.url
    api.stop()  # nothing listens there any more
    result = CliRunner().invoke(app, ["--url", url, "runs", "list"])
    assert result.exit_code == 1 and "Connection error" in result.stderr
