"""Transport: retries, Idempotency-Key reuse, Retry-After and problem+json -> typed errors."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import regdiff_client as rd
from regdiff_client._http import RetryPolicy, parse_retry_after

from tests.client.fake_api import Reply, problem, run_json

SPEC = {"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "train": {"steps": 20, "batch_size": 16}}


def flaky_create(api):
    api.on(
        "POST",
        "/v1/runs",
        problem(503, "Service Unavailable", "db restarting"),
        problem(429, "Too Many Requests", "slow down", **{"Retry-After": "0"}),
        Reply(201, json=run_json("run_7")),
    )


def assert_one_key_three_attempts(api):
    attempts = api.requests("POST", "/v1/runs")
    keys = {a.headers.get("idempotency-key") for a in attempts}
    assert len(attempts) == 3
    assert len(keys) == 1 and None not in keys and "" not in keys
    assert all(a.json() == SPEC for a in attempts)


def test_create_retries_503_then_429_with_one_idempotency_key(api):
    flaky_create(api)
    with rd.Client(api.url, max_backoff=0.01) as client:
        run = client.runs.create(spec=SPEC)
    assert (run.id, run.status) == ("run_7", "queued")
    assert_one_key_three_attempts(api)


def test_async_create_retries_with_one_idempotency_key(api):
    flaky_create(api)

    async def main():
        async with rd.AsyncClient(api.url, max_backoff=0.01) as client:
            return await client.runs.create(spec=SPEC)

    assert asyncio.run(main()).id == "run_7"
    assert_one_key_three_attempts(api)


def test_each_create_call_gets_its_own_key_unless_given(api):
    api.on("POST", "/v1/runs", Reply(201, json=run_json()))
    with rd.Client(api.url) as client:
        client.runs.create(spec=SPEC)
        client.runs.create(spec=SPEC)
        client.runs.create(spec=SPEC, idempotency_key="mine")
    keys = [a.headers["idempotency-key"] for a in api.requests("POST", "/v1/runs")]
    assert keys[0] != keys[1] and keys[2] == "mine"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, rd.BadRequestError),
        (401, rd.AuthenticationError),
        (404, rd.NotFoundError),
        (409, rd.ConflictError),
        (422, rd.UnprocessableEntityError),
        (429, rd.RateLimitError),
        (500, rd.InternalServerError),
        (503, rd.InternalServerError),
        (403, rd.APIError),
    ],
)
def test_problem_json_maps_to_typed_errors(api, status, cls):
    errors = [
        {"field": "train.steps", "message": "must be >= 1"},
        {"field": "lambda", "message": "must be finite"},
    ]
    api.on("POST", "/v1/runs", problem(status, "Some Title", "what went wrong", errors))
    with rd.Client(api.url, max_retries=0) as client, pytest.raises(cls) as info:
        client.runs.create(spec=SPEC)
    err = info.value
    assert isinstance(err, rd.APIError)
    assert (err.status, err.title, err.detail) == (status, "Some Title", "what went wrong")
    assert err.errors == errors
    assert err.field == "train.steps"
    assert "train.steps: must be >= 1" in str(err)


def test_error_without_problem_body_still_typed(api):
    api.on(
        "GET",
        "/v1/runs/r1",
        Reply(502, body=b"<html>bad gateway</html>", headers={"Content-Type": "text/html"}),
    )
    with rd.Client(api.url, max_retries=0) as client, pytest.raises(rd.InternalServerError) as info:
        client.runs.get("r1")
    assert info.value.status == 502
    assert info.value.field is None
    assert "bad gateway" in info.value.detail


def test_client_errors_are_not_retried(api):
    api.on("POST", "/v1/runs", problem(422, "Unprocessable Entity", "bad spec"))
    with rd.Client(api.url, max_backoff=0.01) as client, pytest.raises(rd.UnprocessableEntityError):
        client.runs.create(spec=SPEC)
    assert len(api.requests("POST", "/v1/runs")) == 1


def test_5xx_after_all_retries_raises_the_last_answer(api):
    api.on("GET", "/v1/runs/r1", problem(503, "Service Unavailable", "still down"))
    with rd.Client(api.url, max_retries=2, max_backoff=0.01) as client, pytest.raises(rd.InternalServerError):
        client.runs.get("r1")
    assert len(api.requests("GET", "/v1/runs/r1")) == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_raises_after_retries(caplog):
    caplog.set_level(logging.INFO, logger="regdiff_client")
    start = time.monotonic()
    client = rd.Client(f"http://127.0.0.1:{free_port()}", max_retries=2, max_backoff=0.01)
    with client, pytest.raises(rd.APIConnectionError) as info:
        client.runs.get("r1")
    assert not isinstance(info.value, rd.APITimeoutError)
    assert info.value.status is None
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["retrying GET /v1/runs/r1"] * 2
    assert time.monotonic() - start < 2


def test_timeout_raises_api_timeout_error(api):
    api.on("GET", "/v1/runs/r1", Reply(json=run_json(), delay=1.0))
    with rd.Client(api.url, timeout=0.2, max_retries=0) as client, pytest.raises(rd.APITimeoutError):
        client.runs.get("r1")


def test_backoff_honours_retry_after(api):
    api.on(
        "GET",
        "/v1/runs/r1",
        problem(429, "Too Many Requests", "wait", **{"Retry-After": "1"}),
        Reply(json=run_json("r1")),
    )
    start = time.monotonic()
    with rd.Client(api.url, max_backoff=0.01) as client:  # our own backoff would be ~0.01 s
        assert client.runs.get("r1").id == "r1"
    assert 0.95 <= time.monotonic() - start < 3


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "2"}) == 2
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "3600"}) is None  # too long to block on: own backoff
    in_5s = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3 <= parse_retry_after({"retry-after": in_5s}) <= 5
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=5), usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0


def test_backoff_doubles_from_half_a_second_with_jitter_up_to_the_cap():
    policy = RetryPolicy(max_retries=10)
    for attempt, full in enumerate([0.5, 1, 2, 4, 8, 8]):
        delays = [policy.backoff(attempt) for _ in range(50)]
        assert all(0.75 * full <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(10, None) is None  # retries spent


def test_problem_code_type_and_request_id_are_exposed(api):
    body = {"type": "/problems/quota-exceeded", "code": "quota-exceeded", "title": "Too Many Requests",
            "status": 429, "detail": "3 runs queued", "request_id": "req-42"}
    api.on("POST", "/v1/runs", Reply(429, json=body, headers={"Content-Type": "application/problem+json"}))
    with rd.Client(api.url, max_retries=0) as client, pytest.raises(rd.RateLimitError) as info:
        client.runs.create(spec=SPEC)
    err = info.value
    assert (err.code, err.type, err.request_id) == ("quota-exceeded", "/problems/quota-exceeded", "req-42")
