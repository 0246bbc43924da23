"""API keys: who may call, and when the api refuses to start without them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from store.settings import Settings
from tests.security.harness import ROOT, bearer, create_key, migrated_template
from tests.security.seed import TINY, add_checkpoint

PROBLEM = "application/problem+json"


def assert_401(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer", "Token abc", "Bearer rdk_not-a-real-key",
])
def test_missing_malformed_and_unknown_keys_are_401(make_client, header):
    client = make_client(REGDIFF_AUTH="required")
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/runs/run_x"),
                         ("GET", "/v1/regularizers"), ("GET", "/v1/checkpoints/ckpt_x")):
        assert_401(client.request(method, path, headers=headers, json=TINY if method == "POST" else None))


def test_a_valid_key_works_and_a_revoked_one_stops_at_once(make_client):
    client = make_client(REGDIFF_AUTH="required")
    key_id, key = create_key("acme")
    assert key.startswith("rdk_") and len(key) > 40
    created = client.post("/v1/runs", json=TINY, headers=bearer(key))
    assert created.status_code == 201, created.text
    assert client.get(f"/v1/runs/{created.json()['id']}", headers=bearer(key)).status_code == 200

    from store import keys
    from store.db import session_scope

    with session_scope() as session:
        assert keys.revoke_key(session=session, key_id=key_id)
    assert_401(client.get("/v1/runs", headers=bearer(key)))
    assert "revoked" in client.get("/v1/runs", headers=bearer(key)).json()["detail"]


def test_keys_are_stored_hashed(make_client, tmp_path):
    make_client(REGDIFF_AUTH="required")
    _, key = create_key("acme")
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'regdiff.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    engine.dispose()
    assert len(rows) == 1 and key not in repr(rows) and key[4:20] not in repr(rows)


def test_non_loopback_host_requires_keys_by_default(make_client):
    client = make_client(REGDIFF_HOST="0.0.0.0")
    assert_401(client.get("/v1/runs"))
    assert client.get("/healthz").status_code == 200  # liveness stays open for load balancers


def test_loopback_default_runs_without_keys_and_says_so(make_client, caplog):
    caplog.set_level(logging.WARNING, logger="api.main")
    client = make_client(base_url="http://127.0.0.1")  # the embedded default: auto on 127.0.0.1
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records), caplog.text
    assert client.get("/v1/runs").status_code == 200
    # a key that is sent is still checked: a wrong one is never silently "default"
    assert_401(client.get("/v1/runs", headers=bearer("rdk_wrong")))


def test_the_interface_a_request_arrived_on_counts_too(make_client):
    """`uvicorn --host 0.0.0.0` without REGDIFF_HOST: a request on a LAN address needs a key."""
    client = make_client(base_url="http://10.1.2.3:8000")  # the ASGI scope's "server" is 10.1.2.3
    assert_401(client.get("/v1/runs"))


def test_auth_required_anywhere_with_the_setting(make_client):
    client = make_client(base_url="http://127.0.0.1", REGDIFF_AUTH="required")
    assert_401(client.get("/v1/runs"))


def test_settings_refuse_auth_off_on_a_public_address_without_the_override():
    with pytest.raises(ValidationError, match="REGDIFF_ALLOW_INSECURE"):
        Settings(host="0.0.0.0", auth="off")
    with pytest.raises(ValidationError):
        Settings(host="192.168.1.20", auth="off")
    assert not Settings(host="0.0.0.0", auth="off", allow_insecure=True).auth_enabled
    assert not Settings(host="127.0.0.1", auth="off").auth_enabled
    assert Settings(host="0.0.0.0").auth_enabled and Settings(host="::").auth_enabled
    assert not Settings(host="::1").auth_enabled and not Settings(host="localhost").auth_enabled


def _start_api(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """Import the ASGI app as uvicorn does, in a fresh process: this is where a refusal happens."""
    home = tmp_path / "proc"
    home.mkdir()
    shutil.copy(migrated_template(), home / "regdiff.db")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGDIFF_")}
    return subprocess.run([sys.executable, "-c", "import api.main"], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, "REGDIFF_HOME": str(home), **env}, timeout=180)


def test_the_api_refuses_to_start_open_on_a_public_address(tmp_path):
    refused = _start_api(tmp_path, REGDIFF_HOST="0.0.0.0", REGDIFF_AUTH="off")
    assert refused.returncode != 0
    assert "REGDIFF_ALLOW_INSECURE" in refused.stderr and "REGDIFF_AUTH=off" in refused.stderr


def test_insecure_override_starts_and_warns_loudly(make_client, caplog):
    caplog.set_level(logging.WARNING, logger="api.main")
    client = make_client(REGDIFF_HOST="0.0.0.0", REGDIFF_AUTH="off", REGDIFF_ALLOW_INSECURE="true")
    assert any(r.getMessage().startswith("INSECURE") for r in caplog.records), caplog.text
    assert client.get("/v1/runs").status_code == 200


def test_auth_on_without_any_key_warns_at_start(make_client, caplog):
    caplog.set_level(logging.WARNING, logger="api.main")
    make_client(REGDIFF_AUTH="required")
    assert any("no API key exists" in r.getMessage() for r in caplog.records), caplog.text


def test_logs_never_hold_keys(make_client, caplog):
    """Authorization headers and keys appear in no log record, on success, refusal or crash."""
    caplog.set_level(logging.DEBUG)
    client = make_client(REGDIFF_AUTH="required")
    _, key = create_key("acme")
    run = client.post("/v1/runs", json=TINY, headers=bearer(key)).json()
    client.get("/v1/runs", headers=bearer(key + "x"))
    client.get("/v1/runs", headers={"Authorization": f"Basic {key}"})
    add_checkpoint(run["id"])
    assert client.get(f"/v1/runs/{run['id']}/export", headers=bearer(key)).status_code == 500
    assert caplog.records, "expected some log records (the 500 at least)"
    assert key not in caplog.text and key[4:] not in caplog.text and "Bearer" not in caplog.text
