"""/openapi.json is a document a client generator can use (api/openapi.py): valid OpenAPI, stable
operation ids, every error as the Problem schema under application/problem+json, the regularizer
shortcut declared, typed JSON, binary media types, and Location on every 201. Checked on the real
app (no worker needed), and the claims that are about behaviour are checked against its answers."""

from __future__ import annotations

import io
import re
import uuid
from typing import Annotated, Any

import numpy as np
import pytest
from fastapi import APIRouter, Body, Depends, FastAPI
from openapi_spec_validator import validate

from api import openapi
from api.deps.auth import bearer_scheme
from tests.security.seed import TINY

PROBLEM = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
METHODS = {"get", "put", "post", "patch", "delete"}
OPERATION_ID = re.compile(r"^[a-z_]+_[a-z_]+$")
BINARY = {  # (method, path) -> the media type of its 200
    ("get", "/v1/runs/{run_id}/samples.png"): "image/png",
    ("get", "/v1/samples/{sample_id}/grid.png"): "image/png",
    ("get", "/v1/samples/{sample_id}/images/{index}.png"): "image/png",
    ("get", "/v1/sweeps/{sweep_id}/report.png"): "image/png",
    ("get", "/v1/samples/{sample_id}/samples.npz"): "application/octet-stream",
    ("get", "/v1/checkpoints/{checkpoint_id}"): "application/octet-stream",
    ("get", "/v1/runs/{run_id}/export"): "application/zip",
}


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def is_problem(response: dict[str, Any]) -> bool:
    return response.get("content") == {PROBLEM: {"schema": PROBLEM_REF}}


def test_the_document_is_valid_openapi(document):
    validate(document)
    assert len(operations(document)) >= 25


def test_operation_ids_are_tag_and_name_and_unique(document):
    ids = []
    for method, path, op in operations(document):
        assert len(op.get("tags", [])) == 1, (method, path, op.get("tags"))
        assert OPERATION_ID.match(op["operationId"]), (method, path, op["operationId"])
        assert op["operationId"].startswith(op["tags"][0] + "_")
        ids.append(op["operationId"])
    assert len(ids) == len(set(ids))
    assert {"runs_create", "runs_list", "runs_get", "runs_cancel", "sweeps_report", "datasets_upload",
            "health_ready", "catalog_list_regularizers"} <= set(ids)


def test_every_operation_answers_its_errors_as_problem_json(document):
    for method, path, op in operations(document):
        responses = op["responses"]
        where = f"{method.upper()} {path}"
        errors = {int(code) for code in responses if int(code) >= 400}
        assert {400, 500, 503} <= errors, where
        assert is_problem(responses["500"]) and is_problem(responses["400"]), where
        if op.get("security"):
            assert {401, 403, 429} <= errors, where
            assert "Retry-After" in responses["429"]["headers"], where
        if "{" in path:
            assert 404 in errors, where
        if op.get("parameters") or "requestBody" in op:
            assert is_problem(responses["422"]), where
        if "requestBody" in op:
            assert is_problem(responses["413"]), where
        own = {503} if path == "/readyz" else set()  # readiness answers its 503 with its own body
        for code in errors - own:
            assert is_problem(responses[str(code)]), (where, code)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Problem"]["required"] == ["type", "code", "title", "status", "detail"]


def test_the_problem_schema_is_what_the_api_sends(client, document):
    schema = document["components"]["schemas"]["Problem"]
    conflict = document["paths"]["/v1/runs/{run_id}/samples"]["post"]["responses"]["409"]
    assert is_problem(conflict)
    answer = client.post("/v1/runs", json={**TINY, "train": {"steps": 0}})
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert set(schema["required"]) <= set(body) <= set(schema["properties"])
    assert set(body["errors"][0]) == set(document["components"]["schemas"]["FieldError"]["required"])


def test_the_regularizer_shortcut_is_declared_and_accepted(client, document):
    body = document["paths"]["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body == "#/components/schemas/RunCreate"  # a RunSpec with the run's metadata and webhook
    field = document["components"]["schemas"]["RunCreate"]["properties"]["regularizer"]
    term = {"$ref": "#/components/schemas/RegularizerTerm"}
    assert field["anyOf"] == [{"type": "string"}, term, {"type": "array", "items": term}]
    for shortcut in ("tv", {"name": "tv"}, [{"name": "tv", "weight": 2}]):
        created = client.post("/v1/runs", json={**TINY, "regularizer": shortcut})
        assert created.status_code == 201, created.text
        assert created.json()["spec"]["regularizer"][0]["name"] == "tv"


def test_json_answers_are_typed_and_files_have_media_types(document):
    for method, path, op in operations(document):
        for code, response in op["responses"].items():
            for media_type, content in (response.get("content") or {}).items():
                where = (method, path, code, media_type)
                if media_type in ("application/json", PROBLEM):
                    assert "$ref" in content["schema"], where  # a named model, not a bare object
                elif media_type.startswith("text/"):
                    assert content["schema"] == {"type": "string"}, where
                else:
                    assert content["schema"] == {"type": "string", "format": "binary"}, where
    for (method, path), media_type in BINARY.items():
        assert list(document["paths"][path][method]["responses"]["200"]["content"]) == [media_type]
    events = document["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"application/json", "text/event-stream"}
    for path, model in (("/v1/regularizers", "RegularizersPublic"), ("/v1/presets", "PresetsPublic"),
                        ("/healthz", "Health"), ("/readyz", "Readiness")):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{model}"}


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((4, 8, 8, 1), np.uint8))
    return buf.getvalue()


def test_every_201_declares_location_and_the_handlers_send_it(client, document):
    created = [(method, path) for method, path, op in operations(document) if "201" in op["responses"]]
    assert {("post", "/v1/runs"), ("post", "/v1/sweeps"), ("post", "/v1/datasets")} <= set(created)
    for method, path in created:
        assert "Location" in document["paths"][path][method]["responses"]["201"]["headers"], path
    key = {"Idempotency-Key": str(uuid.uuid4())}
    answers = [
        client.post("/v1/runs", json=TINY, headers=key),
        client.post("/v1/runs", json=TINY, headers=key),  # the replay (200) points at the same run
        client.post("/v1/sweeps", json={"base": TINY, "vary": {"lambda": [0, 0.1]}}),
        client.post("/v1/datasets", files={"file": ("tiny.npz", _npz())}),
    ]
    assert [a.status_code for a in answers] == [201, 200, 201, 201], [a.text for a in answers]
    for answer in answers:
        location = answer.headers["location"]
        assert location.endswith(answer.json()["id"])
        assert client.get(location).json()["id"] == answer.json()["id"]


def test_a_route_added_later_follows_the_rules_without_listing_them():
    """What another router gets for nothing: a tagged route with a key, a path id and a body."""
    router = APIRouter(prefix="/v1/webhook_endpoints", tags=["webhooks"], dependencies=[Depends(bearer_scheme)])

    @router.post("/{endpoint_id}/pings", status_code=201)
    def create_ping(endpoint_id: str, body: Annotated[dict[str, str], Body()]) -> dict[str, str]:
        return body

    app = FastAPI(generate_unique_id_function=openapi.operation_id)
    openapi.install(app)
    app.include_router(router)
    document = app.openapi()
    validate(document)
    op = document["paths"]["/v1/webhook_endpoints/{endpoint_id}/pings"]["post"]
    assert op["operationId"] == "webhooks_create_ping"
    assert {"400", "401", "403", "404", "413", "422", "429", "500", "503"} <= set(op["responses"])
    assert all(is_problem(r) for code, r in op["responses"].items() if int(code) >= 400)
    assert "Location" in op["responses"]["201"]["headers"]


def test_a_documented_route_without_exactly_one_tag_is_refused_at_start():
    app = FastAPI(generate_unique_id_function=openapi.operation_id)
    with pytest.raises(ValueError, match="exactly one tag"):
        app.get("/v1/untagged")(lambda: None)
    app.get("/internal", include_in_schema=False)(lambda: None)  # not documented: no tag needed
