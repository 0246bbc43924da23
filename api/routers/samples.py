"""Samples on demand from a run's checkpoint, and the images they produced."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Response
from PIL import Image

from api.deps import OwnedRun, OwnedSample, SessionDep, SettingsDep
from api.errors import PROBLEM_RESPONSES, Problem, invalid
from api.images import GRID_MIN_WIDTH, ScaleQuery, scaled_png
from api.schemas import SamplePublic, SampleRequest
from store import runs
from store.tables import SampleJob, utcnow
from worker.celery_app import enqueue_sample

router = APIRouter(tags=["samples"], responses=PROBLEM_RESPONSES)
PNG = {200: {"content": {"image/png": {}}}}


@router.post("/v1/runs/{run_id}/samples", status_code=202, response_model=SamplePublic)
def create_samples(body: SampleRequest, run: OwnedRun, session: SessionDep, settings: SettingsDep) -> SamplePublic:
    if body.n > settings.max_sample_n:
        raise invalid("n", f"at most {settings.max_sample_n} images per request (REGDIFF_MAX_SAMPLE_N)")
    if body.checkpoint is not None:
        ckpt = runs.get_checkpoint(session=session, tenant=run.tenant, checkpoint_id=body.checkpoint)
        if ckpt is None or ckpt.run_id != run.id:
            raise invalid("checkpoint", f"run {run.id} has no checkpoint {body.checkpoint!r}; list them at"
                          f" /v1/runs/{run.id}/checkpoints")
    elif runs.latest_checkpoint(session=session, run_id=run.id) is None:
        raise Problem(409, "Conflict", f"run {run.id} has no checkpoint yet (status {run.status})")
    job = SampleJob(tenant=run.tenant, run_id=run.id, checkpoint_id=body.checkpoint, params=body.model_dump(),
                    enqueued_at=utcnow())
    session.add(job)
    session.commit()
    enqueue_sample(job.id)
    return SamplePublic.of(job)


@router.get("/v1/samples/{sample_id}", response_model=SamplePublic)
def get_samples(job: OwnedSample) -> SamplePublic:
    return SamplePublic.of(job)


def _ready(job: SampleJob) -> SampleJob:
    if job.status != "succeeded":
        raise Problem(409, "Conflict", f"sample job {job.id} is {job.status}" + (f": {job.error}" if job.error else ""))
    return job


@router.get("/v1/samples/{sample_id}/grid.png", response_class=Response, responses=PNG)
def sample_grid(job: OwnedSample, scale: ScaleQuery = None) -> Response:
    return Response(scaled_png(_ready(job).grid_png, scale, min_width=GRID_MIN_WIDTH), media_type="image/png")


@router.get("/v1/samples/{sample_id}/samples.npz", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def sample_npz(job: OwnedSample) -> Response:
    return Response(_ready(job).images_npz, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{job.id}.npz"'})


@router.get("/v1/samples/{sample_id}/images/{index}.png", response_class=Response, responses=PNG)
def sample_image(job: OwnedSample, index: Annotated[int, Path(ge=0)], scale: ScaleQuery = None) -> Response:
    with np.load(io.BytesIO(_ready(job).images_npz), allow_pickle=False) as f:
        images = f["images"]
    if index >= len(images):
        raise Problem(404, "Not Found", f"image {index} out of range: the job has {len(images)} images (0..{len(images) - 1})")
    buf = io.BytesIO()
    Image.fromarray(images[index]).save(buf, format="PNG")
    return Response(scaled_png(buf.getvalue(), scale), media_type="image/png")
