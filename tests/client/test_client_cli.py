"""The `regdiff` command line against the scripted server: exit codes, stderr, --json, flags -> spec."""

from __future__ import annotations

import json

import pytest
from regdiff_client.cli import app
from typer.testing import CliRunner

from tests.client.fake_api import Reply, problem, run_json, sse


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


EVALUATION = {  # the shape models/evaluation.py and worker/evaluation.py store on a run
    "n_samples": 64, "n_real": 500, "fcd": 12.3456, "fcd_ci": [10.1, 14.9],
    "fcd_noise_floor": {"value": 3.21, "ci": [2.9, 3.6], "n": 64, "draws": 50, "method": "..."},
    "confidence": 0.87, "confidence_ci": [0.84, 0.9], "classifier_score": 8.1, "classifier_score_ci": [7.6, 8.5],
    "penalty": {"samples": 0.21, "samples_ci": [0.2, 0.22], "real": 0.19, "real_ci": [0.185, 0.195]},
    "penalties": {"tv": {"samples": 0.21}}, "per_sample": {"confidence": [0.9] * 64},
}


def test_get_prints_the_evaluation_as_an_aligned_table(api, regdiff):
    spec = {"dataset": "digits", "lambda": 0.1,
            "regularizer": [{"name": "tv", "weight": 1}, {"name": "l1", "weight": 0.5}]}
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "succeeded", step=20, spec=spec, evaluation=EVALUATION)))
    lines = regdiff("runs", "get", "r1").stdout.splitlines()
    assert "penalty 0.1 * (tv + 0.5*l1)".split() in [line.split() for line in lines]
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["METRIC", "VALUE", "95%", "CI", "N"]
    rows = {line[:table[0].index("VALUE")].strip(): line for line in table[1:]}
    assert list(rows) == ["fcd", "fcd noise floor", "confidence", "classifier score", "penalty on samples",
                          "penalty on real data"]
    assert rows["fcd"].split()[1:] == ["12.35", "[10.1,", "14.9]", "64"]
    assert rows["fcd noise floor"].split()[3:] == ["3.21", "[2.9,", "3.6]", "64"]
    assert rows["penalty on real data"].endswith("500")
    assert len({line.index("[") for line in table[1:]}) == 1  # the columns line up
    raw = json.loads(regdiff("runs", "get", "r1", "--json").stdout)
    assert raw["evaluation"] == EVALUATION


def test_get_says_when_the_evaluation_failed(api, regdiff):
    failed = {"error": "evaluation_failed: the classifier could not be trained", "code": "evaluation_failed"}
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "succeeded", step=20, evaluation=failed)))
    assert "evaluation failed: evaluation_failed: the classifier" in regdiff("runs", "get", "r1").stdout


EVENTS = [
    {"id": 1, "type": "status", "level": "info", "message": "queued", "data": {"status": "queued"},
     "created_at": "2026-12-01T10:00:00.123456Z"},
    {"id": 2, "type": "metrics", "level": "info", "message": "", "data": {"step": 10, "loss": 0.31234},
     "created_at": "2026-12-01T10:00:02Z"},
    {"id": 3, "type": "requeued", "level": "warning", "message": "no message in the broker: sent again",
     "data": None, "created_at": "2026-12-01T10:00:03Z"},
]
LINES = ["2026-12-01 10:00:00  status      queued",
         "2026-12-01 10:00:02  metrics     step 10: loss 0.3123",
         "2026-12-01 10:00:03  requeued    WARNING: no message in the broker: sent again"]


def test_logs_prints_the_events_so_far_one_line_each(api, regdiff):
    api.on("GET", "/v1/runs/r1/events", Reply(json={"data": EVENTS[:2], "has_more": True}),
           Reply(json={"data": EVENTS[2:], "has_more": False}))
    result = regdiff("runs", "logs", "r1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == LINES
    assert [seen.query.get("after") for seen in api.requests("GET", "/v1/runs/r1/events")] == [None, "2"]
    assert all("event-stream" not in seen.headers.get("accept", "") for seen in api.seen)  # no waiting


def test_logs_follow_streams_until_the_run_ends(api, regdiff):
    api.on("GET", "/v1/runs/r1/events", sse(*[(e["id"], e["type"], e) for e in EVENTS], end=True))
    result = regdiff("runs", "logs", "r1", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == LINES
    assert api.requests("GET", "/v1/runs/r1/events")[0].headers["accept"] == "text/event-stream"
    as_json = regdiff("runs", "logs", "r1", "-f", "--json").stdout.splitlines()
    assert [json.loads(line) for line in as_json] == EVENTS  # each event as the server sent it


def test_ui_prints_the_dashboard_url_and_opens_it_on_request(api, regdiff, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)  # no browser in a test; what it would open
    printed = regdiff("ui")
    assert printed.exit_code == 0 and printed.stdout.strip() == f"{api.url}/ui" and opened == []
    assert regdiff("ui", "--open").stdout.strip() == f"{api.url}/ui" and opened == [f"{api.url}/ui"]
    assert api.seen == []  # nothing asked of the server, and no key in the URL


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
