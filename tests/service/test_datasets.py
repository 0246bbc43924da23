"""Datasets through HTTP: built-ins, uploads (.npz and .zip) that a run then trains on, every kind
of bad upload refused with a problem+json naming the file, and nothing stored for it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.datasets import load_builtin
from tests.conftest import TINY_RUN
from tests.live import wait_for

pytestmark = pytest.mark.service
PROBLEM = "application/problem+json"
DIGITS = load_builtin("digits")


def npz_bytes(n: int = 48, offset: int = 0, labels: bool = True) -> bytes:
    buf = io.BytesIO()
    arrays = {"images": DIGITS.images[offset : offset + n, ..., 0]}  # (N, 8, 8): grayscale without C
    if labels:
        arrays["labels"] = DIGITS.labels[offset : offset + n]
    np.savez(buf, **arrays)
    return buf.getvalue()


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def digits_zip(n: int = 40) -> bytes:
    """One folder per class, as a user zips a folder: digits/<label>/<i>.png."""
    return zip_bytes({f"digits/{DIGITS.labels[i]}/{i}.png": png(DIGITS.images[i, ..., 0]) for i in range(n)})


def upload(client, filename: str, data: bytes, **form: str):
    return client.post("/v1/datasets", files={"file": (filename, data, "application/octet-stream")}, data=form)


def uploads(client) -> list[str]:
    return [d["id"] for d in client.get("/v1/datasets").json()["data"] if d["kind"] == "upload"]


def test_builtins_are_listed_with_their_shape_and_availability(client):
    listed = {d["id"]: d for d in client.get("/v1/datasets").json()["data"]}
    assert {"digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10"} <= set(listed)
    digits = client.get("/v1/datasets/digits").json()
    assert digits == listed["digits"]
    assert (digits["image_size"], digits["channels"], digits["count"], digits["num_classes"]) == (8, 1, 1797, 10)
    assert digits["available"] and digits["dataset"] == "digits"
    cifar = listed["cifar10"]
    assert cifar["channels"] == 3 and not cifar["available"] and "cifar-10-batches-py" in cifar["note"]


def test_a_run_on_an_absent_torchvision_set_is_a_422_naming_dataset_and_the_folder(client):
    response = client.post("/v1/runs", json={**TINY_RUN, "dataset": "mnist", "model": {"preset": "unet-s"}})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["dataset"]
    assert "MNIST/raw" in problem["detail"] and "train-images-idx3-ubyte" in problem["detail"]


def test_npz_and_zip_uploads_round_trip_and_a_run_trains_on_one(client):
    created = upload(client, "digits48.npz", npz_bytes(), name="first digits")
    assert created.status_code == 201, created.text
    ds = created.json()
    assert ds["kind"] == "upload" and ds["name"] == "first digits" and ds["dataset"] == f"upload:{ds['id']}"
    assert (ds["image_size"], ds["channels"], ds["count"], ds["num_classes"]) == (8, 1, 48, 10)
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert client.get(f"/v1/datasets/upload:{ds['id']}").json()["id"] == ds["id"]

    again = upload(client, "renamed.npz", npz_bytes())  # the same content: one dataset
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    assert uploads(client).count(ds["id"]) == 1

    zipped = upload(client, "digits40.zip", digits_zip())
    assert zipped.status_code == 201, zipped.text
    z = zipped.json()
    assert (z["image_size"], z["channels"], z["count"], z["labelled"]) == (8, 1, 40, True)
    assert {ds["id"], z["id"]} <= set(uploads(client))

    run = client.post("/v1/runs", json={**TINY_RUN, "dataset": z["dataset"], "train": {"steps": 10, "batch_size": 16}})
    assert run.status_code == 201, run.text
    done = wait_for(client, run.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert client.get(f"/v1/runs/{done['id']}/samples.png").status_code == 200


def _bomb_zip() -> bytes:
    """A member that claims (and holds) far more than the decompression limit: zeros compress ~1000:1."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.png", "w") as f:
        zeros = bytes(1 << 20)
        for _ in range(40):  # 40 MB > REGDIFF_MAX_UPLOAD_UNCOMPRESSED_BYTES of the test service (32 MB)
            f.write(zeros)
    return buf.getvalue()


def _huge_png() -> bytes:
    """A decompression bomb for an image decoder: a 4096x4096 PNG of a few kB."""
    return png(np.zeros((4096, 4096), np.uint8))


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.array([{"x": 1}, None], dtype=object))
    return buf.getvalue()


def _empty_zip() -> bytes:
    return zip_bytes({})


one = DIGITS.images[0, ..., 0]
BAD = [
    ("corrupt.npz", lambda: b"PK\x03\x04 this is not a zip", "corrupt.npz", "not a valid"),
    ("truncated.zip", lambda: digits_zip(4)[:-40], "truncated.zip", "not a valid"),
    ("broken.zip", lambda: zip_bytes({"a.png": png(one), "b.png": b"\x89PNG garbage"}), "b.png", "cannot decode"),
    ("bomb.zip", _bomb_zip, "bomb.png", "zip bomb"),
    ("huge.zip", lambda: zip_bytes({"huge.png": _huge_png()}), "huge.png", "4096x4096"),
    ("evil.zip", lambda: zip_bytes({"a.png": png(one), "../../etc/evil.png": png(one)}), "../../etc/evil.png",
     "unsafe path"),
    ("mixed.zip", lambda: zip_bytes({"a.png": png(one), "b.png": png(np.zeros((16, 16), np.uint8))}), "b.png",
     "same size"),
    ("empty.zip", _empty_zip, "empty.zip", "empty"),
    ("pickle.npz", _pickled_npz, "images.npy", "pickle"),
    ("notes.txt", lambda: b"hello", "notes.txt", ".txt"),
    ("../escape.npz", npz_bytes, "../escape.npz", "unsafe"),
]


@pytest.mark.parametrize(("name", "make", "names", "hint"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_upload_is_a_4xx_problem_naming_the_file_and_stores_nothing(client, name, make, names, hint):
    before = uploads(client)
    response = upload(client, name, make())
    assert 400 <= response.status_code < 500 and response.status_code != 404, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert names in problem["detail"] and hint in problem["detail"], problem
    assert problem["errors"][0]["field"] == "file"
    assert uploads(client) == before


def test_an_upload_over_the_byte_limit_is_a_413(service, client):
    limit = int(service.env["REGDIFF_MAX_UPLOAD_BYTES"])
    before = uploads(client)
    response = upload(client, "big.npz", bytes(limit + 1))
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM
    assert uploads(client) == before


def test_a_request_without_a_file_names_the_field(client):
    response = client.post("/v1/datasets", data={"name": "nothing"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "file"


def test_another_tenants_dataset_is_a_404(service, client, other_tenant):
    ds = upload(client, "mine.npz", npz_bytes(16, offset=100, labels=False)).json()
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 200
    theirs = client.get(f"/v1/datasets/{ds['id']}", headers=other_tenant)
    assert theirs.status_code == 404 and theirs.headers["content-type"] == PROBLEM
    assert ds["id"] not in client.get("/v1/datasets", headers=other_tenant).text
    run = client.post("/v1/runs", json={**TINY_RUN, "dataset": ds["dataset"]}, headers=other_tenant)
    assert run.status_code == 422 and run.json()["errors"][0]["field"] == "dataset"
