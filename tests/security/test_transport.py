"""What the transport says about a keyless request: through a proxy, a tunnel, a UNIX socket, a
rebinding page's Host, or a cross-site form. The embedded default (auto, 127.0.0.1) trusts only
the local user calling it directly."""

from __future__ import annotations

import httpx
import pytest

from tests.security.harness import LiveServer, bearer, create_key
from tests.security.seed import TINY

PROBLEM = "application/problem+json"
LOCAL = "http://127.0.0.1:8000"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    return response.json()


# ---- keys through a proxy or a tunnel ----------------------------------------------------------


@pytest.mark.parametrize("header", [
    {"X-Forwarded-For": "203.0.113.9"}, {"X-Forwarded-Host": "regdiff.example.com"}, {"X-Forwarded-Proto": "https"},
    {"Forwarded": "for=203.0.113.9;proto=https"}, {"X-Real-IP": "203.0.113.9"},
])
def test_a_request_through_a_local_reverse_proxy_needs_a_key(make_client, header):
    """nginx on the same machine: the connection is from 127.0.0.1 to 127.0.0.1, only headers tell."""
    client = make_client(base_url=LOCAL, client=("127.0.0.1", 40000))
    assert client.get("/v1/runs").status_code == 200  # the local user, directly: no key needed
    refused = client.get("/v1/runs", headers=header)
    assert "proxy" in assert_problem(refused, 401)["detail"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    _, key = create_key("acme")
    assert client.get("/v1/runs", headers={**header, **bearer(key)}).status_code == 200


def test_a_tunnel_passing_its_public_host_needs_a_key(make_client):
    """ssh -R or a tunnel that adds no header: the caller's Host names the public side."""
    client = make_client(base_url=LOCAL, client=("127.0.0.1", 40000), REGDIFF_ALLOWED_HOSTS="regdiff.example.com")
    refused = client.get("/v1/runs", headers={"Host": "regdiff.example.com"})
    assert "loopback name" in assert_problem(refused, 401)["detail"]
    _, key = create_key("acme")
    assert client.get("/v1/runs", headers={"Host": "regdiff.example.com", **bearer(key)}).status_code == 200


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000",
                                  "app.localhost:8000"])
def test_loopback_names_stay_keyless(make_client, host):
    client = make_client(base_url=LOCAL, client=("127.0.0.1", 40000))
    assert client.get("/v1/runs", headers={"Host": host}).status_code == 200


def test_over_a_unix_socket_a_key_is_needed(make_client, tmp_path):
    """uvicorn --uds: no peer address; whatever can reach the socket (a proxy, a container) may be remote."""
    client = make_client()
    _, key = create_key("acme")
    path = str(tmp_path / "api.sock")
    with LiveServer(client.app, uds=path), httpx.Client(transport=httpx.HTTPTransport(uds=path),
                                                        base_url="http://localhost") as over_socket:
        assert "UNIX socket" in assert_problem(over_socket.get("/v1/runs"), 401)["detail"]
        assert over_socket.get("/v1/runs", headers=bearer(key)).status_code == 200


# ---- Host allowlist (DNS rebinding) -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/runs", "/healthz", "/v1/nothing-here"])
def test_a_foreign_host_is_a_400_before_routing(make_client, path):
    client = make_client(base_url=LOCAL, client=("127.0.0.1", 40000))
    problem = assert_problem(client.get(path, headers={"Host": "attacker.example:8000"}), 400)
    assert "REGDIFF_ALLOWED_HOSTS" in problem["detail"] and "attacker.example" in problem["detail"]
    rebound_post = client.post("/v1/runs", json=TINY, headers={"Host": "attacker.example"})
    assert_problem(rebound_post, 400)
    assert client.get("/v1/runs").json()["data"] == []  # nothing was created


def test_allowed_hosts_names_and_wildcards(make_client):
    client = make_client(base_url=LOCAL, client=("127.0.0.1", 40000),
                         REGDIFF_ALLOWED_HOSTS="regdiff.example.com, *.lab.example")
    _, key = create_key("acme")
    for host in ("regdiff.example.com", "REGDIFF.example.com:443", "gpu1.lab.example", "a.b.lab.example"):
        assert client.get("/v1/runs", headers={"Host": host, **bearer(key)}).status_code == 200, host
    for host in ("example.com", "lab.example", "evillab.example", "regdiff.example.com.evil"):
        assert_problem(client.get("/v1/runs", headers={"Host": host, **bearer(key)}), 400)


def test_the_bind_address_and_the_arrival_address_are_accepted(make_client):
    """REGDIFF_HOST by default; and the IP a connection arrived on, as a Kubernetes probe sends it."""
    client = make_client(base_url="http://10.1.2.3:8000", REGDIFF_HOST="192.168.7.7")
    assert client.get("/healthz").status_code == 200  # Host 10.1.2.3 on the interface 10.1.2.3
    assert client.get("/healthz", headers={"Host": "192.168.7.7:8000"}).status_code == 200
    assert_problem(client.get("/healthz", headers={"Host": "10.9.9.9"}), 400)


def test_a_star_turns_the_check_off(make_client):
    client = make_client(REGDIFF_ALLOWED_HOSTS="*")
    assert_problem(client.get("/v1/runs", headers={"Host": "anything.example"}), 401)


# ---- keyless state changes a cross-site page could forge ---------------------------------------

NPZ = ("d.npz", b"not really an npz", "application/octet-stream")


def test_a_keyless_multipart_upload_without_the_client_header_is_403(make_client):
    client = make_client(headers={})  # a browser form: no custom header
    problem = assert_problem(client.post("/v1/datasets", files={"file": NPZ}), 403)
    assert "X-Regdiff-Client" in problem["detail"] and "application/json" in problem["detail"]
    assert {d["kind"] for d in client.get("/v1/datasets").json()["data"]} == {"builtin"}  # nothing uploaded


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_keyless_state_changes_need_json_or_the_header(make_client, content_type):
    client = make_client(headers={})
    run_id = client.post("/v1/runs", json=TINY).json()["id"]  # application/json: allowed
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_problem(client.post(f"/v1/runs/{run_id}/cancel", headers=headers), 403)
    assert_problem(client.delete(f"/v1/runs/{run_id}", headers=headers), 403)
    assert client.get(f"/v1/runs/{run_id}").json()["status"] == "queued"


def test_json_the_client_header_or_a_key_let_state_changes_through(make_client):
    client = make_client(headers={}, REGDIFF_ALLOWED_HOSTS="regdiff.example.com")
    with_json = client.post("/v1/runs", json=TINY, headers={"Content-Type": "application/json; charset=utf-8"})
    assert with_json.status_code == 201
    assert client.post(f"/v1/runs/{with_json.json()['id']}/cancel",
                       headers={"X-Regdiff-Client": "1"}).status_code == 200
    upload = client.post("/v1/datasets", files={"file": NPZ}, headers={"X-Regdiff-Client": "1"})
    assert_problem(upload, 422)  # reached the parser: not an npz
    _, key = create_key("acme")
    keyed = client.post("/v1/datasets", files={"file": NPZ}, headers={"Host": "regdiff.example.com", **bearer(key)})
    assert_problem(keyed, 422)


def test_reads_need_neither(make_client):
    client = make_client(headers={})
    assert client.get("/v1/runs").status_code == 200
