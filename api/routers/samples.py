"""Samples on demand from a run's checkpoint, and the images they produced."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Path, Response
from PIL import Image

from api.deps.ownership import OwnedRun, OwnedSample
from api.deps.session import SessionDep, SettingsDep
from api.downloads import blob_response
from api.images import GRID_MIN_WIDTH, ScaleQuery, scaled_png
from api.openapi import CONFLICT, binary
from api.schemas import SamplePublic, SampleRequest
from service import samples as service
from service.errors import Problem

router = APIRouter(tags=["samples"])


@router.post("/v1/runs/{run_id}/samples", status_code=202, response_model=SamplePublic, responses=CONFLICT)
def create_samples(
    body: SampleRequest,
    run: OwnedRun,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> SamplePublic:
    job, created = service.request_samples(session, settings, run, body.model_dump(),
                                           idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return SamplePublic.of(job)


@router.get("/v1/samples/{sample_id}", response_model=SamplePublic)
def get_samples(job: OwnedSample) -> SamplePublic:
    return SamplePublic.of(job)


@router.get("/v1/samples/{sample_id}/grid.png", response_class=Response,
            responses=binary("image/png", "the images as one grid") | CONFLICT)
def sample_grid(job: OwnedSample, scale: ScaleQuery = None) -> Response:
    return Response(scaled_png(service.finished(job).grid_png, scale, min_width=GRID_MIN_WIDTH),
                    media_type="image/png")


@router.get("/v1/samples/{sample_id}/samples.npz", response_class=Response,
            responses=binary("application/octet-stream", "a NumPy .npz: `images` (N, H, W, C) uint8") | CONFLICT)
def sample_npz(job: OwnedSample, session: SessionDep) -> Response:
    """Streamed from the database a chunk at a time."""
    return blob_response(service.images(session, service.finished(job)), "application/octet-stream",
                         f"{job.id}.npz")


@router.delete("/v1/samples/{sample_id}", status_code=204)
def delete_samples(job: OwnedSample, session: SessionDep) -> Response:
    """Removes an on-demand job and its images, whatever its status; a run's preview goes with the run (409)."""
    service.delete(session, job)
    return Response(status_code=204)


@router.get("/v1/samples/{sample_id}/images/{index}.png", response_class=Response,
            responses=binary("image/png", "one image") | CONFLICT)
def sample_image(job: OwnedSample, index: Annotated[int, Path(ge=0)], scale: ScaleQuery = None) -> Response:
    with np.load(io.BytesIO(service.finished(job).images_npz), allow_pickle=False) as f:
        images = f["images"]
    if index >= len(images):
        raise Problem(404, "Not Found", f"image {index} out of range: the job has {len(images)} images (0..{len(images) - 1})")
    buf = io.BytesIO()
    Image.fromarray(images[index]).save(buf, format="PNG")
    return Response(scaled_png(buf.getvalue(), scale), media_type="image/png")
