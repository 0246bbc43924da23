"""Resources against the scripted server: pagination, wait, SSE resume and fallback, samples, uploads."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import sys

import numpy as np
import pytest
import regdiff_client as rd
from PIL import Image
from regdiff_client.resources.runs import build_spec

from tests.client.fake_api import Reply, problem, run_json, sse


def client_for(api) -> rd.Client:
    return rd.Client(api.url, max_backoff=0.01)


def paged_runs(seen):
    """Five runs, two per page, cursor = the last id."""
    ids = [f"run_{i}" for i in range(5)]
    start = ids.index(seen.query["after"]) + 1 if "after" in seen.query else 0
    page = ids[start : start + 2]
    has_more = start + 2 < len(ids)
    return Reply(
        json={
            "data": [run_json(i) for i in page],
            "has_more": has_more,
            "next_cursor": page[-1] if has_more else None,
        }
    )


def test_list_follows_cursors_across_pages(api):
    api.on("GET", "/v1/runs", paged_runs)
    with client_for(api) as client:
        runs = list(client.runs.list(status="queued", limit=2))
    assert [r.id for r in runs] == [f"run_{i}" for i in range(5)]
    queries = [s.query for s in api.requests("GET", "/v1/runs")]
    assert queries == [
        {"status": "queued", "limit": "2"},
        {"status": "queued", "limit": "2", "after": "run_1"},
        {"status": "queued", "limit": "2", "after": "run_3"},
    ]


def test_list_is_lazy(api):
    api.on("GET", "/v1/runs", paged_runs)
    with client_for(api) as client:
        first = next(iter(client.runs.list()))
    assert first.id == "run_0"
    assert len(api.requests("GET", "/v1/runs")) == 1


def test_wait_polls_until_done(api):
    api.on(
        "GET",
        "/v1/runs/r1",
        Reply(json=run_json("r1", "queued")),
        Reply(json=run_json("r1", "running", step=10)),
        Reply(json=run_json("r1", "succeeded", step=20)),
    )
    with client_for(api) as client:
        run = client.runs.wait("r1", progress=True)
    assert (run.status, run.step, run.done) == ("succeeded", 20, True)
    assert len(api.requests("GET", "/v1/runs/r1")) == 3


def test_wait_raises_on_failure_unless_told_not_to(api):
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "failed", error="CUDA out of memory")))
    with client_for(api) as client:
        with pytest.raises(rd.JobFailedError, match="CUDA out of memory") as info:
            client.runs.wait("r1", progress=False)
        assert info.value.job.status == "failed"
        assert client.runs.wait("r1", progress=False, raise_on_failure=False).error == "CUDA out of memory"


def test_wait_timeout(api):
    api.on("GET", "/v1/runs/r1", Reply(json=run_json("r1", "running", step=3)))
    with client_for(api) as client, pytest.raises(rd.WaitTimeoutError) as info:
        client.runs.wait("r1", timeout=0.3, progress=False)
    assert info.value.job.step == 3
    assert isinstance(info.value, TimeoutError)


def event(i, kind="log"):
    return (i, kind, {"id": i, "type": kind, "level": "info", "message": f"step {i}", "data": {"step": i}})


def test_events_resume_with_last_event_id_after_a_drop(api):
    api.on(
        "GET",
        "/v1/runs/r1/events",
        sse(event(1), event(2), truncate=True),  # the connection drops after event 2
        sse(event(3), end=True),
    )
    with client_for(api) as client:
        events = list(client.runs.events("r1"))
    assert [(e.id, e.message, e.data) for e in events] == [(i, f"step {i}", {"step": i}) for i in (1, 2, 3)]
    opened = api.requests("GET", "/v1/runs/r1/events")
    assert [o.headers.get("accept") for o in opened] == ["text/event-stream"] * 2
    assert "last-event-id" not in opened[0].headers
    assert opened[1].headers["last-event-id"] == "2"
    assert api.requests("GET", "/v1/runs/r1") == []  # `end` needs no status check


def test_events_without_an_end_message_reconnect_until_the_run_is_over(api):
    api.on(
        "GET",
        "/v1/runs/r1/events",
        sse(event(1)),  # closes cleanly while the run still runs: reconnect
        sse(event(2)),  # closes cleanly after the run ended: one JSON page catches the rest
        Reply(json={"data": [event(3)[2]], "has_more": False}),
    )
    api.on(
        "GET", "/v1/runs/r1", Reply(json=run_json("r1", "running")), Reply(json=run_json("r1", "succeeded"))
    )
    with client_for(api) as client:
        assert [e.id for e in client.runs.events("r1")] == [1, 2, 3]
    opened = api.requests("GET", "/v1/runs/r1/events")
    assert opened[1].headers["last-event-id"] == "1"
    assert opened[2].query == {"after": "2"} and opened[2].headers["accept"] == "application/json"


@pytest.mark.parametrize(
    "no_stream",
    [
        problem(406, "Not Acceptable", "no SSE here"),
        Reply(json={"data": [], "has_more": False}),  # Accept ignored: JSON instead of a stream
    ],
)
def test_events_fall_back_to_polling_json_pages(api, no_stream):
    pages = [
        Reply(json={"data": [event(1)[2], event(2)[2]], "has_more": True}),
        Reply(json={"data": [event(3)[2]], "has_more": False}),
        Reply(json={"data": [], "has_more": False}),
    ]

    def events(seen):
        return no_stream if seen.headers.get("accept") == "text/event-stream" else pages.pop(0)

    api.on("GET", "/v1/runs/r1/events", events)
    api.on(
        "GET", "/v1/runs/r1", Reply(json=run_json("r1", "running")), Reply(json=run_json("r1", "succeeded"))
    )
    with client_for(api) as client:
        assert [e.id for e in client.runs.events("r1")] == [1, 2, 3]
    polled = [
        s.query
        for s in api.requests("GET", "/v1/runs/r1/events")
        if s.headers.get("accept") != "text/event-stream"
    ]
    assert polled == [{}, {"after": "2"}, {"after": "3"}]


def test_events_of_a_missing_run_raise_not_found(api):
    with client_for(api) as client, pytest.raises(rd.NotFoundError):
        list(client.runs.events("nope"))


def test_metrics_become_step_value_pairs(api):
    api.on("GET", "/v1/runs/r1/metrics", Reply(json={"series": {"loss": [[10, 0.9], [20, 0.5]]}}))
    with client_for(api) as client:
        assert client.runs.metrics("r1") == {"loss": [(10, 0.9), (20, 0.5)]}


def png_bytes(size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def npz_bytes(images) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=images)
    return buffer.getvalue()


def test_samples_create_wait_and_fetch(api, tmp_path):
    images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    job = {"id": "smp_1", "object": "sample", "status": "queued", "run_id": "r1", "params": {"n": 2}}
    api.on("POST", "/v1/runs/r1/samples", Reply(202, json=job))
    api.on("GET", "/v1/samples/smp_1", Reply(json={**job, "status": "succeeded"}))
    api.on(
        "GET", "/v1/samples/smp_1/grid.png", Reply(body=png_bytes(), headers={"Content-Type": "image/png"})
    )
    api.on("GET", "/v1/samples/smp_1/samples.npz", Reply(body=npz_bytes(images)))
    with client_for(api) as client:
        created = client.samples.create("r1", n=2, sampler="ddim", steps=10)
        done = client.samples.wait(created.id)
        grid = client.samples.grid_png(done.id)
        array = client.samples.array(done.id)
        pil = client.samples.images(done.id)
        saved = client.samples.save_grid(done.id, tmp_path / "g.png")
    (post,) = api.requests("POST", "/v1/runs/r1/samples")
    assert post.json() == {"n": 2, "sampler": "ddim", "steps": 10}  # unset parameters: server defaults
    assert post.headers["idempotency-key"]
    assert done.status == "succeeded" and grid.startswith(b"\x89PNG")
    assert array.dtype == np.uint8 and np.array_equal(array, images)
    assert [(im.mode, im.size) for im in pil] == [("L", (8, 8))] * 2
    assert saved.read_bytes() == grid


def test_async_client_mirrors_runs_and_samples(api):
    api.on("GET", "/v1/runs", paged_runs)
    api.on(
        "GET", "/v1/runs/r1", Reply(json=run_json("r1", "running")), Reply(json=run_json("r1", "succeeded"))
    )
    api.on("POST", "/v1/runs/r1/cancel", Reply(json=run_json("r1", "cancelling")))
    api.on("POST", "/v1/runs/r1/samples", Reply(202, json={"id": "smp_1", "status": "succeeded"}))
    api.on("GET", "/v1/samples/smp_1/grid.png", Reply(body=png_bytes()))

    async def main():
        async with rd.AsyncClient(api.url) as client:
            ids = [run.id async for run in client.runs.list()]
            final = await client.runs.wait("r1", progress=False)
            cancelled = await client.runs.cancel("r1")
            job = await client.samples.create("r1", n=4)
            return ids, final, cancelled, await client.samples.grid_png(job.id)

    ids, final, cancelled, grid = asyncio.run(main())
    assert ids == [f"run_{i}" for i in range(5)]
    assert final.status == "succeeded" and cancelled.status == "cancelling"
    assert grid.startswith(b"\x89PNG")


def multipart_parts(seen) -> dict[str, bytes]:
    head = f"Content-Type: {seen.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + seen.body, policy=email.policy.HTTP)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def test_dataset_upload_of_an_array_sends_an_npz(api):
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2])
    api.on("POST", "/v1/datasets", Reply(201, json={"id": "ds_1", "name": "mine", "n": 3}))
    with client_for(api) as client:
        dataset = client.datasets.upload(images, labels=labels, name="mine")
    assert (dataset.id, dataset.name, dataset.raw["n"]) == ("ds_1", "mine", 3)
    upload = api.requests("POST", "/v1/datasets")[0]
    assert upload.headers.get("x-regdiff-client") == "1"  # what lets a keyless local api take a multipart POST
    parts = multipart_parts(upload)
    assert parts["name"] == b"mine"
    with np.load(io.BytesIO(parts["file"]), allow_pickle=False) as npz:
        assert np.array_equal(npz["images"], images) and np.array_equal(npz["labels"], labels)


def test_dataset_upload_of_a_path_sends_the_file(api, tmp_path):
    path = tmp_path / "digits.npz"
    path.write_bytes(npz_bytes(np.zeros((1, 8, 8), np.uint8)))
    api.on("POST", "/v1/datasets", Reply(201, json={"id": "ds_2"}))
    with client_for(api) as client:
        assert client.datasets.upload(path).id == "ds_2"
    seen = api.requests("POST", "/v1/datasets")[0]
    assert multipart_parts(seen)["file"] == path.read_bytes()
    assert 'filename="digits.npz"' in seen.body.decode("latin-1")


def test_images_helpers_say_which_extra_to_install(api, monkeypatch):
    api.on("GET", "/v1/samples/smp_1/samples.npz", Reply(body=b"PK"))
    monkeypatch.setitem(sys.modules, "numpy", None)  # as if the [images] extra were not installed
    with client_for(api) as client, pytest.raises(ImportError, match=r"regdiff-client\[images\]"):
        client.samples.array("smp_1")


def test_checkpoints_sweeps_and_service_calls(api, tmp_path):
    api.on("GET", "/v1/runs/r1/checkpoints", Reply(json={"data": [{"id": "ck_1", "step": 10, "size": 3}]}))
    api.on("GET", "/v1/checkpoints/ck_1", Reply(body=b"abc"))
    api.on("POST", "/v1/sweeps", Reply(201, json={"id": "sw_1", "status": "running", "run_ids": ["a", "b"]}))
    api.on("GET", "/v1/sweeps/sw_1/report", Reply(json={"runs": [{"lambda": 0, "tv": 0.2}]}))
    api.on("GET", "/v1/regularizers", Reply(json={"data": [{"name": "tv"}]}))
    api.on("GET", "/healthz", Reply(json={"status": "ok"}))
    with client_for(api) as client:
        (checkpoint,) = client.checkpoints.list("r1")
        path = client.checkpoints.download(checkpoint.id, tmp_path / "ck.safetensors")
        sweep = client.sweeps.create(base={"dataset": "digits"}, vary={"lambda": (0, 1)})
        report = client.sweeps.report(sweep.id)
        regularizers = client.regularizers()
        health = client.health()
    assert (checkpoint.step, path.read_bytes()) == (10, b"abc")
    assert api.requests("POST", "/v1/sweeps")[0].json() == {
        "base": {"dataset": "digits"},
        "vary": {"lambda": [0, 1]},
    }
    assert sweep.run_ids == ["a", "b"] and report["runs"][0]["tv"] == 0.2
    assert regularizers == [{"name": "tv"}] and health == {"status": "ok"}


def test_results_keep_unknown_fields_and_default_nulls():
    run = rd.Run.from_json({**run_json("r1"), "metrics": None, "new_field": [1, 2]})
    assert run.metrics == {} and run.raw["new_field"] == [1, 2] and run.raw["object"] == "run"
    with pytest.raises(AttributeError):
        run.status = "x"  # frozen


def test_build_spec_keywords_override_and_merge_one_level():
    base = {"dataset": "digits", "train": {"steps": 100, "batch_size": 16}, "lambda": 1}
    spec = build_spec(base, {"lambda_": 0.5, "train": {"steps": 5}, "checkpoint_every": None})
    assert spec == {
        "dataset": "digits",
        "train": {"steps": 5, "batch_size": 16},
        "lambda": 0.5,
        "checkpoint_every": None,
    }
    assert base["train"]["steps"] == 100  # the caller's dict is untouched
