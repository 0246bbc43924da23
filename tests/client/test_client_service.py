"""The SDK and the CLI against the live service (api + Celery worker): one tiny run per backend."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import pytest
import regdiff_client as rd
from PIL import Image
from regdiff_client.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.service

TINY = {
    "dataset": "digits",
    "regularizer": "tv",
    "lambda": 0.1,
    "model": {"preset": "unet-xs"},
    "train": {"steps": 20, "batch_size": 16},
    "preview": {"n": 4, "steps": 10},
}
TIMEOUT = 300  # seconds for a 20-step CPU run, however busy the worker is


@pytest.fixture(scope="module")
def trained(service):
    """Submitted and awaited through the SDK: create -> wait (with the progress bar) -> the final Run."""
    with rd.Client(service.url) as client:
        run = client.runs.create(spec=TINY)
        assert (run.status, run.total_steps) == ("queued", 20)
        return client.runs.wait(run.id, timeout=TIMEOUT, progress=True)


@pytest.fixture
def sdk(service):
    with rd.Client(service.url) as client:
        yield client


def test_create_wait_and_save_the_grid(trained, sdk, tmp_path):
    assert (trained.status, trained.step, trained.done) == ("succeeded", 20, True)
    assert "loss" in trained.metrics
    path = sdk.runs.save_grid(trained.id, tmp_path / "grid.png")
    with Image.open(path) as grid:
        grid.load()
        assert grid.format == "PNG"
    assert sdk.runs.samples_png(trained.id) == path.read_bytes()


def test_events_metrics_and_checkpoints(trained, sdk, tmp_path):
    events = list(sdk.runs.events(trained.id))  # SSE; ends because the run is over
    assert events and all(isinstance(e, rd.Event) for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert list(sdk.runs.events(trained.id, after=events[-1].id)) == []
    assert sdk.runs.metrics(trained.id)["loss"][-1][0] <= 20
    checkpoints = sdk.checkpoints.list(trained.id)
    assert checkpoints[-1].step == 20
    saved = sdk.checkpoints.download(checkpoints[-1].id, tmp_path / "final.safetensors")
    assert saved.stat().st_size == checkpoints[-1].size


def test_samples_on_demand(trained, sdk):
    job = sdk.samples.create(trained.id, n=2, steps=5, seed=1)
    done = sdk.samples.wait(job.id, timeout=TIMEOUT)
    assert done.status == "succeeded"
    images = sdk.samples.array(done.id)
    assert images.shape[0] == 2 and images.dtype.name == "uint8"
    assert sdk.samples.grid_png(done.id).startswith(b"\x89PNG")


def test_async_client_reads_the_same_run(trained, service):
    async def main():
        async with rd.AsyncClient(service.url) as client:
            run = await client.runs.get(trained.id)
            listed = [r.id async for r in client.runs.list(status="succeeded", limit=2)]
            return run, listed

    run, listed = asyncio.run(main())
    assert run.status == "succeeded" and trained.id in listed


def test_bad_spec_raises_unprocessable_with_the_field(sdk):
    with pytest.raises(rd.UnprocessableEntityError) as info:
        sdk.runs.create(spec=TINY, train={"steps": 0})
    assert info.value.status == 422
    assert info.value.field == "train.steps"
    assert "greater than or equal to 1" in info.value.errors[0]["message"]


def test_missing_run_raises_not_found(sdk):
    with pytest.raises(rd.NotFoundError):
        sdk.runs.get("run_does_not_exist")


def test_idempotent_create_then_cancel_and_delete(sdk):
    slow = {**TINY, "train": {"steps": 100_000, "batch_size": 16}}
    key = str(uuid.uuid4())
    first = sdk.runs.create(spec=slow, idempotency_key=key)
    again = sdk.runs.create(spec=slow, idempotency_key=key)
    assert again.id == first.id
    sdk.runs.cancel(first.id)
    assert sdk.runs.wait(first.id, timeout=TIMEOUT, progress=False).status == "cancelled"
    sdk.runs.delete(first.id)
    with pytest.raises(rd.NotFoundError):
        sdk.runs.get(first.id)


def test_delete_samples_sweeps_and_datasets(trained, sdk):
    job = sdk.samples.wait(sdk.samples.create(trained.id, n=2, steps=2, seed=3).id, timeout=TIMEOUT)
    sdk.samples.delete(job.id)
    with pytest.raises(rd.NotFoundError):
        sdk.samples.get(job.id)

    sweep = sdk.sweeps.create(base={**TINY, "train": {"steps": 100_000, "batch_size": 16}}, vary={"lambda": [0, 0.1]})
    sdk.sweeps.delete(sweep.id)
    with pytest.raises(rd.NotFoundError):
        sdk.sweeps.get(sweep.id)
    with pytest.raises(rd.NotFoundError):  # its runs went with it
        sdk.runs.get(sweep.runs[0]["id"])

    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8), dtype=np.uint8)
    dataset = sdk.datasets.upload(images, name="deleted-by-sdk")
    sdk.datasets.delete(dataset.id)
    with pytest.raises(rd.NotFoundError):
        sdk.datasets.get(dataset.id)


def test_cli_exit_codes_and_json(trained, service):
    runner = CliRunner()

    def regdiff(*args):
        return runner.invoke(app, ["--url", service.url, *args])

    got = regdiff("runs", "get", trained.id, "--json")
    assert got.exit_code == 0 and json.loads(got.stdout)["status"] == "succeeded"
    listed = regdiff("runs", "list", "--json")
    assert listed.exit_code == 0 and trained.id in [r["id"] for r in json.loads(listed.stdout)]
    missing = regdiff("runs", "get", "run_does_not_exist")
    assert missing.exit_code == 1 and "run_does_not_exist" in missing.stderr
    assert regdiff("runs", "watch", trained.id).exit_code == 0


def test_cli_logs_follows_a_live_run_and_get_shows_its_evaluation(service):
    """`runs logs --follow` on a run that has just been queued streams until it ends; `runs get`
    then prints its evaluation (a small one: 16 samples) as a table; `ui` names a page that loads."""
    runner = CliRunner()

    def regdiff(*args):
        result = runner.invoke(app, ["--url", service.url, *args])
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    spec = {**TINY, "train": {"steps": 10, "batch_size": 16, "log_every": 5},
            "evaluation": {"n_samples": 16, "steps": 2}}
    with rd.Client(service.url) as client:
        run = client.runs.create(spec=spec)
        followed = regdiff("runs", "logs", run.id, "--follow")  # returns once the run has ended
        assert client.runs.get(run.id).status == "succeeded"
        written = list(client.runs.events(run.id, follow=False))
    assert len(followed) == len(written) and followed[0].endswith("status      queued")
    assert any(" metrics     step 10: " in line for line in followed)
    assert followed[-1].endswith("status      succeeded")
    assert regdiff("runs", "logs", run.id) == followed  # the same lines once it is over

    shown = regdiff("runs", "get", run.id)
    table = shown[shown.index("") + 1:]
    assert table[0].split() == ["METRIC", "VALUE", "95%", "CI", "N"]
    rows = {line.split("  ")[0]: line.split() for line in table[1:]}
    assert {"fcd", "fcd noise floor", "penalty on samples", "penalty on real data"} <= set(rows)
    assert rows["fcd"][-1] == "16" and rows["fcd"][2].startswith("[")

    url = regdiff("ui")[0]
    assert url == f"{service.url}/ui"
    page = httpx.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
