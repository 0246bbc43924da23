"""Problem bodies: a type and a stable code per kind, each documented at its type's path, the
HTTP phrase as title, and the request id (accepted when safe, else made) on every response."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.exc import OperationalError

from api.errors import KINDS
from tests.security.seed import TINY
from worker.errors import SourceMissing, user_error

PROBLEM = "application/problem+json"


@pytest.fixture
def client(make_client):
    return make_client()


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["type"] == f"/problems/{body['code']}" and body["code"] in KINDS
    return body


@pytest.mark.parametrize(("call", "status", "code", "title"), [
    (lambda c: c.get("/v1/runs/run_nope"), 404, "not-found", "Not Found"),
    (lambda c: c.get("/no/such/path"), 404, "not-found", "Not Found"),
    (lambda c: c.delete("/healthz"), 405, "method-not-allowed", "Method Not Allowed"),
    (lambda c: c.post("/v1/runs", json={**TINY, "lambda": "x"}), 422, "validation", "Unprocessable Content"),
    (lambda c: c.post("/v1/datasets", files={"file": ("a.npz", b"not a zip")}), 422, "invalid-upload",
     "Unprocessable Content"),
    (lambda c: c.get("/v1/runs?x=%00"), 400, "bad-request", "Bad Request"),  # from a middleware
])
def test_each_kind_has_its_code_type_and_the_http_phrase_as_title(client, call, status, code, title):
    body = problem(call(client), status)
    assert (body["code"], body["title"]) == (code, title)
    assert body["detail"]  # the specific prose stays in detail


def test_a_run_without_a_checkpoint_cannot_be_sampled_and_says_conflict(client):
    run_id = client.post("/v1/runs", json=TINY).json()["id"]  # no worker here: it stays queued
    body = problem(client.post(f"/v1/runs/{run_id}/samples", json={}), 409)
    assert (body["code"], body["title"]) == ("conflict", "Conflict")
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200  # a repeated cancel is not an error


def test_every_problem_type_is_documented_at_its_path(client):
    listed = client.get("/problems").json()["data"]
    assert {p["code"] for p in listed} == set(KINDS)
    for kind in listed:
        page = client.get(kind["type"])
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert kind["code"] in page.text and kind["meaning"].split(";")[0][:40] in page.text
    assert problem(client.get("/problems/no-such-kind"), 404)["code"] == "not-found"


@pytest.mark.parametrize("given", ["abc-123", "trace:01HXYZ.req_7", "A" * 128])
def test_a_safe_request_id_is_echoed(client, given):
    assert client.get("/healthz", headers={"X-Request-ID": given}).headers["x-request-id"] == given
    assert problem(client.get("/v1/runs/run_nope", headers={"X-Request-ID": given}), 404)["request_id"] == given


@pytest.mark.parametrize("given", ["", "A" * 129, "has space", "new\\nline", "quote\"", "<script>"])
def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(client, given):
    echoed = client.get("/healthz", headers={"X-Request-ID": given}).headers["x-request-id"]
    assert echoed != given and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_every_response_gets_a_request_id_even_without_one(client):
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_uploads_over_the_concurrency_bound_are_a_503_uploads_busy(make_client):
    """Every slot held (as by uploads being parsed): the next one is refused at once, then accepted."""
    client = make_client(REGDIFF_MAX_CONCURRENT_UPLOADS="2")
    slots = client.app.state.upload_slots
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)
    try:
        busy = client.post("/v1/datasets", files={"file": ("a.npz", b"not a zip")})
        body = problem(busy, 503)
        assert body["code"] == "uploads-busy" and busy.headers["retry-after"] == "5"
    finally:
        slots.release()
        slots.release()
    assert client.post("/v1/datasets", files={"file": ("a.npz", b"not a zip")}).status_code == 422


def test_the_data_folder_of_the_server_is_never_in_an_answer(make_client, tmp_path):
    data_dir = tmp_path / "secret-data-folder"
    client = make_client(REGDIFF_DATA_DIR=str(data_dir))
    refused = problem(client.post("/v1/runs", json={**TINY, "dataset": "cifar10", "model": {"preset": "unet-s"}}), 422)
    assert "cifar-10-batches-py" in refused["detail"] and "<data_dir>" in refused["detail"]
    for text in (refused["detail"], client.get("/v1/datasets").text, client.get("/v1/datasets/cifar10").text):
        assert "secret-data-folder" not in text and str(tmp_path) not in text


@pytest.mark.parametrize(("exc", "code"), [
    (OperationalError("SELECT secret FROM runs", {}, Exception("could not connect to db.internal.example:5432")),
     "storage-unavailable"),
    (FileNotFoundError("/srv/regdiff/blobs/ab/cd: no such file"), "internal"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB on host gpu-7.internal"), "out-of-memory"),
    (KeyError("/var/lib/regdiff/cache/x.npz"), "internal"),
])
def test_worker_errors_are_a_code_and_a_message_without_internals(exc, code):
    error = user_error(exc)
    assert error.code == code and str(error) == f"{code}: {error.message}"
    for secret in ("SELECT", "internal.example", "/srv", "/var", "gpu-7", "2.00 GiB"):
        assert secret not in str(error)


def test_a_deleted_source_keeps_its_message_and_a_bare_lookup_error_does_not():
    gone = user_error(SourceMissing("dataset 'upload:ds_x' no longer exists"))
    assert str(gone) == "source-missing: dataset 'upload:ds_x' no longer exists"
    assert user_error(KeyError("/var/lib/regdiff/cache/x.npz")).code == "internal"
