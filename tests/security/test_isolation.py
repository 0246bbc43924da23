"""Tenant isolation on every route: another tenant's id answers exactly as a missing one.

The routes are enumerated from the app itself, so a new route with an id in its path fails
here until its parameter is given an owner's id below (and then it is checked like the rest).
"""

from __future__ import annotations

import re

import pytest

from tests.security.harness import bearer, create_key, operations
from tests.security.seed import TINY, seed_tenant

PROBLEM = "application/problem+json"


def id_routes(app) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameter names) of every route with a parameter in its path."""
    return [(method, path, re.findall(r"{(\w+)}", path)) for method, path in operations(app) if "{" in path]


def fill(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], template)


@pytest.fixture
def two_tenants(make_client):
    client = make_client(REGDIFF_AUTH="required")
    _, key_a = create_key("alice")
    _, key_b = create_key("bob")
    return client, key_a, key_b, seed_tenant(client, bearer(key_a), "alice"), seed_tenant(client, bearer(key_b), "bob")


def test_every_id_route_answers_404_to_another_tenant_exactly_as_to_a_missing_id(two_tenants):
    client, key_a, key_b, a, _ = two_tenants
    missing = {name: (value[:-4] + "dead" if name != "index" else "0") for name, value in a.items()}
    routes = id_routes(client.app)
    assert len(routes) >= 14, routes
    for method, template, params in routes:
        unknown = [p for p in params if p not in a]
        assert not unknown, f"{method} {template}: give tenant A an owned {unknown} in seed_tenant"
        body = {} if method == "POST" else None
        theirs = client.request(method, fill(template, a), headers=bearer(key_b), json=body)
        absent = client.request(method, fill(template, missing), headers=bearer(key_b), json=body)
        where = f"{method} {template}"
        assert theirs.status_code == 404, (where, theirs.status_code, theirs.text)
        assert theirs.headers["content-type"] == PROBLEM, where
        scrub = theirs.text.replace(theirs.json()["request_id"], absent.json()["request_id"])  # per request
        for name in params:
            scrub = scrub.replace(a[name], missing[name])
        assert scrub == absent.text, (where, theirs.text, absent.text)

    # bob's DELETE and cancel did nothing to alice's run
    mine = client.get(f"/v1/runs/{a['run_id']}", headers=bearer(key_a))
    assert mine.status_code == 200 and mine.json()["status"] == "queued"


def test_the_owner_reaches_every_id_route(two_tenants):
    """The ids above are real: alice gets past the ownership check on every route."""
    client, key_a, _, a, _ = two_tenants
    for method, template, _ in id_routes(client.app):
        if method == "DELETE" or template.endswith("/export"):  # export of the corrupt checkpoint: a 500 test
            continue
        response = client.request(method, fill(template, a), headers=bearer(key_a),
                                  json={} if method == "POST" else None)
        assert response.status_code != 404 or "no checkpoint" in response.text, (method, template, response.text)
        assert response.status_code < 500, (method, template, response.text)


def test_lists_show_only_ones_own(two_tenants):
    client, key_a, key_b, a, b = two_tenants
    for key, own, other in ((key_a, a, b), (key_b, b, a)):
        listed = client.get("/v1/runs", params={"limit": 100}, headers=bearer(key)).json()["data"]
        assert [r["id"] for r in listed] == [own["run_id"]]
        # another tenant's run as a cursor or a sweep filter reveals nothing: the cursor is refused
        # exactly like one that never existed (a 422 naming `after`)
        foreign = client.get("/v1/runs", params={"after": other["run_id"]}, headers=bearer(key))
        missing = client.get("/v1/runs", params={"after": "run_missing"}, headers=bearer(key))
        assert foreign.status_code == missing.status_code == 422
        assert foreign.json()["errors"][0]["field"] == missing.json()["errors"][0]["field"] == "after"
        assert foreign.json()["detail"].replace(other["run_id"], "?") == missing.json()["detail"].replace(
            "run_missing", "?")
        assert client.get("/v1/runs", params={"sweep_id": other["sweep_id"]}, headers=bearer(key)).json()["data"] == []
        events = client.get(f"/v1/runs/{own['run_id']}/events", headers=bearer(key)).json()["data"]
        assert events and all("run_id" not in e for e in events)
    for path, id_name in (("/v1/datasets", "dataset_id"), ("/v1/sweeps", "sweep_id")):
        assert ("GET", path) in operations(client.app)
        for key, own, other in ((key_a, a, b), (key_b, b, a)):
            text = client.get(path, headers=bearer(key)).text
            assert own[id_name] in text and other[id_name] not in text


def test_another_tenants_checkpoint_cannot_seed_a_run_or_a_sample(two_tenants):
    client, key_a, key_b, a, b = two_tenants
    theirs = client.post("/v1/runs", json={**TINY, "init_from": a["checkpoint_id"]}, headers=bearer(key_b))
    absent = client.post("/v1/runs", json={**TINY, "init_from": "ckpt_missing"}, headers=bearer(key_b))
    assert theirs.status_code == absent.status_code == 422
    assert [e["field"] for e in theirs.json()["errors"]] == ["init_from"]
    sample = client.post(f"/v1/runs/{b['run_id']}/samples", json={"checkpoint": a["checkpoint_id"]},
                         headers=bearer(key_b))
    assert sample.status_code == 422 and sample.json()["errors"][0]["field"] == "checkpoint"
    own = client.post("/v1/runs", json={**TINY, "init_from": a["checkpoint_id"]}, headers=bearer(key_a))
    assert own.status_code == 201, own.text


def test_an_uploaded_dataset_is_only_its_owners(two_tenants):
    client, key_a, key_b, a, _ = two_tenants
    spec = {**TINY, "dataset": f"upload:{a['dataset_id']}"}
    assert client.post("/v1/runs", json=spec, headers=bearer(key_a)).status_code == 201
    theirs = client.post("/v1/runs", json=spec, headers=bearer(key_b))
    assert theirs.status_code == 422 and theirs.json()["errors"][0]["field"] == "dataset"
