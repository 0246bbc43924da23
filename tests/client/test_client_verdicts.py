"""compare and the seeded sweep report through the SDK (sync and async) and the CLI, against the
scripted server: the request each sends and what the CLI prints."""

from __future__ import annotations

import asyncio
import json

import pytest
import regdiff_client as rd
from regdiff_client.cli import app
from typer.testing import CliRunner

from tests.client.fake_api import Reply, problem

SENTENCE = ("TV on samples fell 13% [10%, 16%] vs the lambda=0 baseline (real data: 0.48); FCD rose from 640"
            " [620, 660] to 700 [680, 725]: quality degraded.")
COMPARISON = {"object": "run_comparison", "run_id": "r1", "baseline_id": "r0", "seeds": {"run": 1, "baseline": 1},
              "seed_variance": {"method": "calibration", "runs": ["r0", "r7"]},
              "verdict": {"penalty": "reduced", "quality": "degraded", "sentence": SENTENCE}}
EST = {"value": 0.4, "ci": [0.38, 0.42]}
REPORT = {
    "object": "sweep_report", "sweep_id": "sw_1", "reference": {"penalty_real": 0.48}, "best": "λ=1",
    "statement": "Best setting: λ=1. TV on samples fell 13%.",
    "points": [
        {"label": "λ=0", "baseline": True, "run_ids": ["a", "b"], "evaluated": 2, "penalty": EST, "fcd": EST,
         "relative_change": None, "fcd_difference": None, "verdict": None},
        {"label": "λ=1", "baseline": False, "run_ids": ["c", "d"], "evaluated": 2, "penalty": EST, "fcd": EST,
         "relative_change": {"value": -0.13, "ci": [-0.16, -0.1]}, "fcd_difference": EST,
         "verdict": {"penalty": "reduced", "quality": "kept", "sentence": "..."}},
    ],
}


@pytest.fixture
def regdiff(api):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["--url", api.url, *args])


def test_compare_and_seeded_sweeps_through_the_sdk(api):
    api.on("GET", "/v1/runs/r1/compare", Reply(json=COMPARISON))
    api.on("POST", "/v1/sweeps", Reply(201, json={"id": "sw_1", "runs": [{"id": "a"}, {"id": "b"}], "seeds": [0, 1]}))
    api.on("GET", "/v1/sweeps/sw_1/report", Reply(json=REPORT))
    with rd.Client(api.url, max_retries=0) as client:
        assert client.runs.compare("r1", baseline="r0")["verdict"]["sentence"] == SENTENCE
        sweep = client.sweeps.create(base={"dataset": "digits"}, vary={"lambda": [1]}, seeds=[0, 1],
                                     max_fcd_increase=20)
        assert sweep.seeds == [0, 1] and client.sweeps.report(sweep.id)["best"] == "λ=1"
    assert api.requests("GET", "/v1/runs/r1/compare")[0].query == {"baseline": "r0"}
    assert api.requests("POST", "/v1/sweeps")[0].json() == {
        "base": {"dataset": "digits"}, "vary": {"lambda": [1]}, "seeds": [0, 1], "max_fcd_increase": 20}

    async def main():
        async with rd.AsyncClient(api.url, max_retries=0) as client:
            compared = await client.runs.compare("r1", baseline="r0")
            created = await client.sweeps.create(base={}, vary={"lambda": [1]}, seeds=[3])
            return compared, created, await client.sweeps.report("sw_1")

    compared, created, report = asyncio.run(main())
    assert compared == COMPARISON and created.id == "sw_1" and report == REPORT
    assert api.requests("POST", "/v1/sweeps")[1].json()["seeds"] == [3]


def test_the_cli_prints_the_verdict_sentence_and_the_report_table(api, regdiff):
    api.on("GET", "/v1/runs/r1/compare", Reply(json=COMPARISON))
    api.on("GET", "/v1/sweeps/sw_1/report", Reply(json=REPORT))
    api.on("POST", "/v1/sweeps", Reply(201, json={"id": "sw_1", "runs": [{"id": "a"}] * 4}))
    said = regdiff("runs", "compare", "r1", "--baseline", "r0")
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[0] == SENTENCE and "calibration on 2 lambda=0 runs" in said.stdout
    assert json.loads(regdiff("runs", "compare", "r1", "--baseline", "r0", "--json").stdout) == COMPARISON
    table = regdiff("sweeps", "report", "sw_1")
    assert table.exit_code == 0, table.output
    assert "reduced, quality kept" in table.stdout and "-13% [-16, -10]" in table.stdout
    assert "best: λ=1" in table.stdout and REPORT["statement"] in table.stdout
    created = regdiff("sweeps", "create", "--vary", "lambda=1", "--seeds", "0,1")
    assert created.exit_code == 0 and "4 runs" in created.stdout
    assert api.requests("POST", "/v1/sweeps")[0].json()["seeds"] == [0, 1]
    assert regdiff("sweeps", "create", "--vary", "lambda=1", "--seeds", "a,b").exit_code == 2


def test_a_bad_baseline_exits_1_with_the_problem(api, regdiff):
    errors = [{"field": "baseline", "message": "no run with id 'nope'"}]
    api.on("GET", "/v1/runs/r1/compare", problem(404, "Not Found", "baseline: no run with id 'nope'", errors))
    result = regdiff("runs", "compare", "r1", "--baseline", "nope")
    assert result.exit_code == 1 and "no run with id 'nope'" in result.stderr
