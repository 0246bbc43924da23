"""`scale` on the PNG endpoints: nearest-neighbour (each pixel an exact s x s block, checked
against numpy's Kronecker product), grids at least 256 px wide by default, bounds as 422s."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from api.images import MAX_SCALE, MAX_SIDE, scaled_png
from models.images import grid_png
from service.errors import Problem
from tests.live import wait_until
from tests.ui.conftest import Deployment


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_scaled_png_repeats_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    png = grid_png(images)
    one = pixels(png)
    assert np.array_equal(pixels(scaled_png(png, 3)), np.kron(one, np.ones((3, 3), dtype=np.uint8)))
    assert scaled_png(png, 1) == png
    auto = pixels(scaled_png(png, None, min_width=256))
    factor = -(-256 // one.shape[1])  # the smallest integer reaching 256 px
    assert np.array_equal(auto, np.kron(one, np.ones((factor, factor), dtype=np.uint8)))
    with pytest.raises(Problem) as refused:
        scaled_png(png, MAX_SIDE // one.shape[1] + 1)
    assert refused.value.errors[0]["field"] == "scale"


@pytest.mark.service
def test_scale_on_the_endpoints(deployment: Deployment) -> None:
    run_id = deployment.run["id"]
    with deployment.client() as client:
        grid = f"/v1/runs/{run_id}/samples.png"
        one = pixels(client.get(grid, params={"scale": 1}).content)
        assert pixels(client.get(grid).content).shape[1] >= 256
        assert np.array_equal(pixels(client.get(grid, params={"scale": 5}).content),
                              np.kron(one, np.ones((5, 5), dtype=np.uint8)))
        for bad in (0, -1, MAX_SCALE + 1, "two"):
            response = client.get(grid, params={"scale": bad})
            assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
            assert "scale" in response.text

        job = client.post(f"/v1/runs/{run_id}/samples", json={"n": 2, "steps": 2}).raise_for_status().json()
        wait_until(lambda: client.get(f"/v1/samples/{job['id']}").json()["status"] == "succeeded")
        assert pixels(client.get(f"/v1/samples/{job['id']}/grid.png").content).shape[1] >= 256
        image = pixels(client.get(f"/v1/samples/{job['id']}/images/1.png").content)
        assert image.shape[:2] == (8, 8)  # a single image stays 1:1 unless asked
        assert np.array_equal(pixels(client.get(f"/v1/samples/{job['id']}/images/1.png", params={"scale": 4}).content),
                              np.kron(image, np.ones((4, 4), dtype=np.uint8)))
        assert client.get(f"/v1/samples/{job['id']}/images/1.png", params={"scale": 0}).status_code == 422
