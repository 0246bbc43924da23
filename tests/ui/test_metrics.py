"""/metrics on a live service after a tiny run: the documented families in Prometheus text
format, counted per route template, and protected as README says (a key, or loopback)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from store.settings import Settings
from tests.ui.conftest import Deployment

FAMILIES = {
    "regdiff_http_requests": "counter",
    "regdiff_http_request_duration_seconds": "histogram",
    "regdiff_runs": "gauge",
    "regdiff_queue_depth": "gauge",
    "regdiff_sample_jobs": "gauge",
    "regdiff_training_steps_per_second": "gauge",
    "regdiff_training_images_per_second": "gauge",
    "regdiff_oldest_heartbeat_age_seconds": "gauge",
    "regdiff_database_up": "gauge",
}


def scrape(client: httpx.Client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")  # Prometheus text format
    return {f.name: f for f in text_string_to_metric_families(response.text)}


@pytest.mark.service
def test_metrics_after_a_run(deployment: Deployment) -> None:
    run_id = deployment.run["id"]
    with deployment.client() as client:
        client.get(f"/v1/runs/{run_id}").raise_for_status()
        client.get("/v1/runs/run_nope")  # a 404 on a known template
        client.get("/no/such/path")  # an unknown path
        families = scrape(client)

    assert {name: families[name].type for name in FAMILIES if name in families} == FAMILIES
    runs = {s.labels["status"]: s.value for s in families["regdiff_runs"].samples}
    assert runs["succeeded"] >= 1 and runs["queued"] == families["regdiff_queue_depth"].samples[0].value
    assert all("tenant" not in s.labels for f in families.values() for s in f.samples)
    requests = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
                for s in families["regdiff_http_requests"].samples if s.name == "regdiff_http_requests_total"}
    # per route template, never per raw path: both run lookups count under one label
    assert requests[("GET", "/v1/runs/{run_id}", "200")] >= 1
    assert requests[("GET", "/v1/runs/{run_id}", "404")] >= 1
    assert ("GET", "unmatched", "404") in requests
    assert not [key for key in requests if run_id in key[1] or "run_nope" in key[1]]
    latency = [s for s in families["regdiff_http_request_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels["route"] == "/v1/runs/{run_id}"]
    assert latency and latency[0].value >= 2
    assert families["regdiff_database_up"].samples[0].value == 1
    assert families["regdiff_oldest_heartbeat_age_seconds"].samples[0].value == 0  # nothing runs now


@pytest.mark.service
def test_worker_exports_its_own_metrics(deployment: Deployment) -> None:
    """REGDIFF_WORKER_METRICS_PORT: the worker that trained the run counts it on its own port."""
    text = httpx.get(f"http://127.0.0.1:{deployment.worker_metrics_port}/metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    done = {(s.labels["task"], s.labels["state"]): s.value for s in families["regdiff_worker_tasks"].samples
            if s.name == "regdiff_worker_tasks_total"}
    assert done[("regdiff.train_run", "SUCCESS")] >= 1
    running = {s.labels["task"]: s.value for s in families["regdiff_worker_tasks_running"].samples}
    assert running["regdiff.train_run"] == 0
    for name in ("regdiff_worker_training_steps_per_second", "regdiff_worker_training_images_per_second"):
        assert families[name].samples[0].value == 0  # idle now: the pace is zeroed when a task ends


@pytest.mark.service
def test_metrics_protection(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=30) as anonymous:
        if deployment.key:  # keys on: a key is needed, even from loopback
            assert anonymous.get("/metrics").status_code == 401
        else:  # keys off: loopback clients are served
            assert anonymous.get("/metrics").status_code == 200
        wrong = anonymous.get("/metrics", headers={"Authorization": "Bearer rd_not_a_key"})
        assert wrong.status_code == 401 and wrong.headers["content-type"] == "application/problem+json"


def test_metrics_refuse_remote_clients_without_a_key(tmp_path) -> None:
    """Keys off and a client beyond loopback: 403, the text names the two ways in."""
    app = create_app(Settings(home=tmp_path, auth="off"))
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("192.0.2.7", 40000)) as remote:
        response = remote.get("/metrics")
    assert response.status_code == 403
    assert "loopback" in response.json()["detail"] and "Bearer" in response.json()["detail"]
