"""Webhooks and metadata end to end: the api, a live worker that delivers, a real database and
broker, and a receiver on 127.0.0.1 in this process that checks every signature with the SDK.

Deliveries need a service that may call 127.0.0.1 (REGDIFF_WEBHOOK_ALLOW_PRIVATE=true) with short
backoffs: `hooked`, one more service per backend for this module. The refusals of such URLs are
checked on the default service, where the setting is off as it is by default."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import regdiff_client as rd

from tests.conftest import TINY_RUN, _start
from tests.live import Service, wait_until

pytestmark = pytest.mark.service

TIMEOUT_SECONDS = 1  # the worker's per-try timeout in `hooked`; /slow answers later than this
MAX_ATTEMPTS = 3
PUBLIC_URL = "https://1.1.1.1/hooks"  # an address literal: no DNS needed to accept it


@pytest.fixture(scope="module")
def hooked(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service on the default service's backend whose webhooks may reach this machine, fast."""
    yield from _start(service.backend, tmp_path_factory, REGDIFF_WEBHOOK_ALLOW_PRIVATE="true",
                      REGDIFF_WEBHOOK_BACKOFF_SECONDS="0.2", REGDIFF_WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
                      REGDIFF_WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS), REGDIFF_WEBHOOK_POLL_SECONDS="0.2")


class Receiver:
    """Records every POST as (path, headers, body, status answered). By path: /flaky answers 500
    to the first try of each webhook-id and 200 after; /fail always 500; /slow answers 200 after
    the worker gave up waiting; anything else 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.answer(self.path, headers.get("webhook-id", ""))
                with receiver.lock:
                    receiver.calls.append((self.path, headers, body, status))
                if self.path == "/slow":
                    time.sleep(TIMEOUT_SECONDS + 2)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # /slow: the worker hung up already
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, msg_id: str) -> int:
        if path == "/fail":
            return 500
        if path == "/flaky":
            with self.lock:
                seen = any(p == path and h.get("webhook-id") == msg_id for p, h, _, _ in self.calls)
            return 200 if seen else 500
        return 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes, int]]:
        with self.lock:
            return [(h, b, s) for p, h, b, s in self.calls if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def sdk(hooked: Service) -> Iterator[rd.Client]:
    with rd.Client(hooked.url, max_backoff=0.5) as client:
        yield client


def settled(sdk: rd.Client, endpoint_id: str, count: int) -> list[rd.WebhookDelivery]:
    """The endpoint's `count` deliveries once none is pending any more."""
    def done():
        rows = list(sdk.webhook_endpoints.deliveries(endpoint_id))
        return rows if len(rows) == count and all(d.status != "pending" for d in rows) else None
    return wait_until(done, timeout=120, interval=0.3)


def verified(secret: str, calls: list[tuple[dict[str, str], bytes, int]]) -> dict[str, list[dict]]:
    """webhook-id -> the verified payload of every try (the SDK raises on a bad signature)."""
    tries: dict[str, list[dict]] = collections.defaultdict(list)
    for headers, body, _ in calls:
        tries[headers["webhook-id"]].append(rd.webhooks.verify(secret, headers, body))
    return tries


def test_deliveries_are_signed_retried_once_and_logged_and_a_bad_receiver_harms_nothing(sdk, receiver):
    flaky = sdk.webhook_endpoints.create(receiver.url("/flaky"), events=["run.running", "run.succeeded"])
    failing = sdk.webhook_endpoints.create(receiver.url("/fail"), events=["run.succeeded"], description="always 500")
    slow = sdk.webhook_endpoints.create(receiver.url("/slow"), events=["run.succeeded"])
    assert flaky.secret.startswith("whsec_") and len({flaky.secret, failing.secret, slow.secret}) == 3
    assert sdk.webhook_endpoints.get(flaky.id).secret is None  # shown once
    assert {flaky.id, failing.id, slow.id} <= {e.id for e in sdk.webhook_endpoints.list()}

    run = sdk.runs.create(spec=TINY_RUN, metadata={"exp": "hooks"}, webhook={"url": receiver.url("/run")})
    own = run.webhook
    assert own["run_id"] == run.id and own["secret"].startswith("whsec_") and own["events"] == [
        "run.running", "run.succeeded", "run.failed", "run.cancelled"]
    assert sdk.runs.wait(run.id, timeout=300, progress=False).status == "succeeded"

    # /flaky: each event failed once (500), then got through: one accepted delivery per webhook-id
    logged = settled(sdk, flaky.id, 2)
    assert sorted(d.type for d in logged) == ["run.running", "run.succeeded"]
    assert all((d.status, d.attempts, d.last_response_code, d.next_attempt_at) == ("succeeded", 2, 200, None)
               for d in logged)
    calls = receiver.at("/flaky")
    tries = verified(flaky.secret, calls)
    assert set(tries) == {d.event_id for d in logged}
    assert all(len(t) == 2 and t[0] == t[1] for t in tries.values())  # the same event, id and body, twice
    accepted = collections.Counter(h["webhook-id"] for h, _, status in calls if status == 200)
    assert accepted == {d.event_id: 1 for d in logged}
    event = next(t[0] for t in tries.values() if t[0]["type"] == "run.succeeded")
    assert event["data"]["id"] == run.id and event["data"]["status"] == "succeeded"
    assert event["data"]["metadata"] == {"exp": "hooks"} and event["timestamp"]
    with pytest.raises(rd.WebhookVerificationError):  # another endpoint's secret proves nothing
        rd.webhooks.verify(failing.secret, *calls[0][:2])

    # the run's own webhook: its own secret; run.running once although the run was claimed once
    own_tries = verified(own["secret"], receiver.at("/run"))
    assert sorted(t[0]["type"] for t in own_tries.values()) == ["run.running", "run.succeeded"]
    assert all(len(t) == 1 for t in own_tries.values())

    # /fail and /slow: retried with backoff, then failed in the log; everything above still happened
    (failed,) = settled(sdk, failing.id, 1)
    assert (failed.status, failed.attempts, failed.last_response_code) == ("failed", MAX_ATTEMPTS, 500)
    assert len({h["webhook-id"] for h, _, _ in receiver.at("/fail")}) == 1
    (timed_out,) = settled(sdk, slow.id, 1)
    assert (timed_out.status, timed_out.attempts) == ("failed", MAX_ATTEMPTS)
    assert "timed out" in timed_out.last_error and timed_out.last_response_code is None

    sdk.webhook_endpoints.delete(slow.id)
    with pytest.raises(rd.NotFoundError):
        sdk.webhook_endpoints.get(slow.id)


def test_sweep_finished_and_samples_succeeded_carry_the_sweeps_metadata(sdk, receiver):
    endpoint = sdk.webhook_endpoints.create(receiver.url("/sweeps"), events=["sweep.finished", "samples.succeeded"])
    tag = uuid.uuid4().hex[:8]
    sweep = sdk.sweeps.create(base=TINY_RUN, vary={"lambda": [0.0]}, metadata={"exp": tag})  # one run, no baseline
    (run_id,) = [r["id"] for r in sweep.runs]
    assert sweep.metadata == {"exp": tag}
    assert [r.id for r in sdk.runs.list(metadata={"exp": tag})] == [run_id]  # the sweep's runs carry it
    assert sdk.runs.wait(run_id, timeout=300, progress=False).status == "succeeded"
    job = sdk.samples.create(run_id, n=1, steps=2)
    assert sdk.samples.wait(job.id, timeout=120).status == "succeeded"

    logged = settled(sdk, endpoint.id, 2)
    assert all(d.status == "succeeded" and d.attempts == 1 for d in logged)
    events = {t[0]["type"]: t[0]["data"] for t in verified(endpoint.secret, receiver.at("/sweeps")).values()}
    assert events["sweep.finished"]["id"] == sweep.id and events["sweep.finished"]["status"] == "succeeded"
    assert events["sweep.finished"]["metadata"] == {"exp": tag}
    assert events["samples.succeeded"]["id"] == job.id and events["samples.succeeded"]["run_id"] == run_id


async def _async_round_trip(url: str, receiver_url: str) -> None:
    async with rd.AsyncClient(url) as client:
        endpoint = await client.webhook_endpoints.create(receiver_url, events=["samples.succeeded"])
        assert (await client.webhook_endpoints.get(endpoint.id)).events == ["samples.succeeded"]
        assert endpoint.id in [e.id async for e in client.webhook_endpoints.list()]
        assert [d async for d in client.webhook_endpoints.deliveries(endpoint.id)] == []
        await client.webhook_endpoints.delete(endpoint.id)


def test_the_async_sdk_manages_endpoints(hooked, receiver):
    asyncio.run(_async_round_trip(hooked.url, receiver.url("/async")))


def test_a_delivery_is_checked_again_when_it_is_sent(receiver):
    """What creation accepted may be refused at a try (DNS rebinding, a setting changed): the
    worker's own check runs before anything is sent."""
    from worker.webhooks import post

    refused = post(receiver.url("/later"), msg_id="evt_x", body=b"{}", secret="whsec_AAAA", allow_private=False,
                   timeout=1)
    assert not refused.succeeded and "loopback" in refused.error and receiver.at("/later") == []
    sent = post(receiver.url("/later"), msg_id="evt_x", body=b"{}", secret="whsec_AAAA", allow_private=True,
                timeout=1)
    assert sent.succeeded and len(receiver.at("/later")) == 1
    (headers, _, _), = receiver.at("/later")
    assert headers["host"] == f"127.0.0.1:{receiver.server.server_address[1]}"


# ---- refusals, on the default service (REGDIFF_WEBHOOK_ALLOW_PRIVATE unset) ----------------------

REFUSED_URLS = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://[::ffff:192.168.0.1]/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("ftp://1.1.1.1/hook", "scheme 'ftp'"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("not a url", "scheme"),
    ("https://1.1.1.1/" + "a" * 2040, "at most 2048"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED_URLS, ids=[w for _, w in REFUSED_URLS])
def test_urls_that_are_not_public_http_are_a_422_naming_the_url(client, url, why):
    made = client.post("/v1/webhook_endpoints", json={"url": url})
    assert made.status_code == 422, made.text
    assert made.json()["errors"][0]["field"] == "url" and why in made.json()["detail"]
    run = client.post("/v1/runs", json={**TINY_RUN, "webhook": {"url": url}})
    assert run.status_code == 422 and run.json()["errors"][0]["field"] == "webhook.url"


def test_unknown_events_are_a_422_listing_the_allowed_ones(client):
    made = client.post("/v1/webhook_endpoints", json={"url": PUBLIC_URL, "events": ["run.succeeded", "run.done"]})
    assert made.status_code == 422
    (error,) = made.json()["errors"]
    assert error["field"] == "events" and "'run.done'" in error["message"]
    assert "run.running, run.succeeded, run.failed, run.cancelled, sweep.finished, samples.succeeded" in error["message"]
    assert client.post("/v1/webhook_endpoints", json={"url": PUBLIC_URL, "events": []}).status_code == 422
    run = client.post("/v1/runs", json={**TINY_RUN, "webhook": {"url": PUBLIC_URL, "events": ["sweep.finished"]}})
    assert run.status_code == 422 and run.json()["errors"][0]["field"] == "webhook.events"
    too_long = client.post("/v1/webhook_endpoints", json={"url": PUBLIC_URL, "description": "d" * 501})
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "description"


def test_endpoints_are_the_tenants_own(client, other_tenant):
    made = client.post("/v1/webhook_endpoints", json={"url": PUBLIC_URL, "events": ["sweep.finished"]})
    assert made.status_code == 201, made.text
    endpoint = made.json()
    try:
        assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["sweep.finished"]
        listed = client.get("/v1/webhook_endpoints").json()["data"]
        assert endpoint["id"] in [e["id"] for e in listed] and all("secret" not in e for e in listed)
        assert "secret" not in client.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()

        theirs = httpx.Client(base_url=str(client.base_url), headers={**other_tenant, "X-Regdiff-Client": "1"})
        with theirs:
            for method, suffix in (("GET", ""), ("GET", "/deliveries"), ("DELETE", "")):
                answer = theirs.request(method, f"/v1/webhook_endpoints/{endpoint['id']}{suffix}")
                assert answer.status_code == 404, (method, suffix, answer.text)
            assert endpoint["id"] not in theirs.get("/v1/webhook_endpoints").text
            cursor = theirs.get("/v1/webhook_endpoints", params={"after": endpoint["id"]})
            assert cursor.status_code == 422 and cursor.json()["errors"][0]["field"] == "after"
        assert client.get(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 200  # still there
    finally:
        assert client.delete(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 204
    assert client.get(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 404


def test_a_runs_own_endpoint_is_listed_with_its_run_and_goes_with_it(client):
    made = client.post("/v1/runs", json={**TINY_RUN, "webhook": {"url": PUBLIC_URL, "events": ["run.failed"]}},
                       headers={"Idempotency-Key": uuid.uuid4().hex})
    assert made.status_code == 201, made.text
    run, own = made.json(), made.json()["webhook"]
    client.post(f"/v1/runs/{run['id']}/cancel")
    assert own["run_id"] == run["id"] and own["events"] == ["run.failed"] and own["secret"].startswith("whsec_")
    listed = client.get(f"/v1/webhook_endpoints/{own['id']}").json()
    assert listed["run_id"] == run["id"] and "secret" not in listed
    assert client.get(f"/v1/runs/{run['id']}").json()["webhook"] is None  # the secret was shown once
    assert client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert client.get(f"/v1/webhook_endpoints/{own['id']}").status_code == 404


# ---- metadata --------------------------------------------------------------------------------------


def _queued_then_cancelled(client, **extra) -> dict:
    """A run with `extra` that never trains (cancelled while queued): metadata needs no training."""
    made = client.post("/v1/runs", json={**TINY_RUN, **extra})
    assert made.status_code == 201, made.text
    client.post(f"/v1/runs/{made.json()['id']}/cancel")
    return made.json()


def test_metadata_is_returned_filtered_and_merge_patched(client, other_tenant):
    tag = uuid.uuid4().hex[:8]
    a = _queued_then_cancelled(client, metadata={"exp": tag, "arm": "a"})
    b = _queued_then_cancelled(client, metadata={"exp": tag, "arm": "b"})
    assert a["metadata"] == {"exp": tag, "arm": "a"}

    def listed(**pairs) -> list[str]:
        answer = client.get("/v1/runs", params={f"metadata[{k}]": v for k, v in pairs.items()})
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["data"]]

    assert listed(exp=tag) == [b["id"], a["id"]]
    assert listed(exp=tag, arm="a") == [a["id"]]
    assert listed(exp=tag, arm="c") == []

    patched = client.patch(f"/v1/runs/{a['id']}", json={"metadata": {"arm": None, "note": "re-run"}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"] == {"exp": tag, "note": "re-run"}
    assert client.get(f"/v1/runs/{a['id']}").json()["metadata"] == {"exp": tag, "note": "re-run"}
    assert listed(exp=tag, arm="a") == [] and listed(note="re-run", exp=tag) == [a["id"]]
    assert client.patch(f"/v1/runs/{a['id']}", json={}).json()["metadata"] == {"exp": tag, "note": "re-run"}

    theirs = client.patch(f"/v1/runs/{a['id']}", json={"metadata": {"exp": "mine"}}, headers=other_tenant)
    missing = client.patch("/v1/runs/run_missing", json={"metadata": {"exp": "mine"}})
    assert theirs.status_code == missing.status_code == 404
    assert client.get(f"/v1/runs/{a['id']}").json()["metadata"]["exp"] == tag
    assert a["id"] not in [r["id"] for r in client.get(
        "/v1/runs", params={"metadata[exp]": tag}, headers=other_tenant).json()["data"]]


TOO_MUCH = [
    ({f"k{i}": "v" for i in range(17)}, "metadata", "at most 16"),
    ({"k": "v" * 501}, "metadata.k", "at most 500"),
    ({"bad key": "v"}, "metadata", "key 'bad key' is not allowed"),
    ({"k" * 41: "v"}, "metadata", "1-40 characters"),
    ({"": "v"}, "metadata", "is not allowed"),
    ({"k": 3}, "metadata.k", "string"),
]


@pytest.mark.parametrize(("metadata", "field", "why"), TOO_MUCH, ids=[f"{f}:{i}" for i, (_, f, _) in enumerate(TOO_MUCH)])
def test_metadata_beyond_the_limits_is_a_422_naming_the_field(client, metadata, field, why):
    for answer in (client.post("/v1/runs", json={**TINY_RUN, "metadata": metadata}),
                   client.post("/v1/sweeps", json={"base": TINY_RUN, "vary": {"lambda": [0.0]}, "metadata": metadata})):
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field and why in answer.json()["errors"][0]["message"]


def test_a_patch_beyond_the_limits_changes_nothing(client):
    run = _queued_then_cancelled(client, metadata={f"k{i}": "v" for i in range(16)})
    grown = client.patch(f"/v1/runs/{run['id']}", json={"metadata": {"one_more": "v"}})
    assert grown.status_code == 422 and grown.json()["errors"][0]["field"] == "metadata"
    long = client.patch(f"/v1/runs/{run['id']}", json={"metadata": {"k0": "v" * 501}})
    assert long.status_code == 422 and long.json()["errors"][0]["field"] == "metadata.k0"
    assert client.get(f"/v1/runs/{run['id']}").json()["metadata"] == run["metadata"]
    bad_filter = client.get("/v1/runs", params={"metadata[no spaces]": "x"})
    assert bad_filter.status_code == 422 and bad_filter.json()["errors"][0]["field"] == "metadata[no spaces]"


def test_sweep_metadata_is_listed_and_filtered(client):
    tag = uuid.uuid4().hex[:8]
    made = client.post("/v1/sweeps", json={"base": TINY_RUN, "vary": {"lambda": [0.0]}, "metadata": {"exp": tag}})
    assert made.status_code == 201, made.text
    sweep = made.json()
    client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert sweep["metadata"] == {"exp": tag}
    found = client.get("/v1/sweeps", params={"metadata[exp]": tag}).json()["data"]
    assert [s["id"] for s in found] == [sweep["id"]]
    assert client.get("/v1/sweeps", params={"metadata[exp]": tag + "x"}).json()["data"] == []
    runs = client.get("/v1/runs", params={"sweep_id": sweep["id"]}).json()["data"]
    assert [r["metadata"] for r in runs] == [{"exp": tag}]
