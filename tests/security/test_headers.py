"""Response hardening: security headers, CORS off by default, and no stack traces in a 500."""

from __future__ import annotations

import logging

from tests.security.seed import TINY, add_checkpoint

COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def test_every_response_carries_the_security_headers(make_client):
    client = make_client()
    run_id = client.post("/v1/runs", json=TINY).json()["id"]
    for method, path in (("GET", "/healthz"), ("GET", f"/v1/runs/{run_id}"), ("GET", "/v1/runs/run_missing"),
                         ("POST", "/v1/runs"), ("GET", "/openapi.json"), ("PUT", "/v1/runs"), ("GET", "/nowhere")):
        response = client.request(method, path, json={"bad": 1} if method == "POST" else None)
        for name, value in COMMON.items():
            assert response.headers.get(name) == value, (method, path, name)
        assert response.headers["cache-control"] == "no-store", (method, path)
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_the_docs_page_keeps_its_scripts_but_not_the_rest(make_client):
    client = make_client()
    for path in ("/docs", "/redoc", "/ui"):
        page = client.get(path)
        # the HTML pages set their own CSP: scripts from this origin only (served offline), no inline script
        directives = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
        assert page.status_code == 200 and directives["script-src"] == "'self'", path
        assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'", path
        assert all(page.headers.get(k) == v for k, v in COMMON.items()), path


def test_cors_is_off_by_default(make_client):
    client = make_client()
    preflight = client.options("/v1/runs", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/v1/runs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_listed_origins(make_client):
    client = make_client(REGDIFF_CORS_ORIGINS="https://ui.example, https://other.example")
    ok = client.options("/v1/runs", headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization,content-type"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-credentials" not in ok.headers  # bearer keys, never cookies
    assert client.get("/v1/runs", headers={"Origin": "https://ui.example"}
                      ).headers["access-control-allow-origin"] == "https://ui.example"
    bad = client.options("/v1/runs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.headers.get("access-control-allow-origin") != "https://evil.example"


def test_an_internal_error_is_a_problem_without_a_stack_trace(make_client, caplog):
    """Real corrupted data, no mocks: a stored checkpoint that is not safetensors breaks the export."""
    caplog.set_level(logging.ERROR, logger="api.errors")
    client = make_client()
    run_id = client.post("/v1/runs", json=TINY).json()["id"]
    add_checkpoint(run_id)  # bytes that are not safetensors
    response = client.get(f"/v1/runs/{run_id}/export")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    request_id = body.pop("request_id")
    assert request_id == response.headers["x-request-id"]
    assert body == {"type": "/problems/internal", "code": "internal", "title": "Internal Server Error",
                    "status": 500, "detail": "an unexpected error occurred; it has been logged"}
    assert "Traceback" in caplog.text  # the operator gets the trace, in the log only
    assert [r.request_id for r in caplog.records if r.name == "api.errors"] == [request_id]  # quotable
    assert all(word not in response.text for word in ("Traceback", "File ", ".py", "safetensors"))
