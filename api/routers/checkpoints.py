"""Checkpoint downloads (safetensors) and a run's export as a diffusers folder, both streamed."""

from __future__ import annotations

import tempfile
from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps.auth import TenantDep
from api.deps.ownership import OwnedRun
from api.deps.session import SessionDep
from api.downloads import blob_response, file_response
from api.openapi import CONFLICT, binary
from service import exports
from service.errors import not_found
from store import blobs, runs

router = APIRouter(tags=["checkpoints"])


@router.get("/v1/checkpoints/{checkpoint_id}", response_class=Response,
            responses=binary("application/octet-stream", "the weights as safetensors"))
def download_checkpoint(checkpoint_id: Annotated[str, Path(max_length=64)], session: SessionDep,
                        tenant: TenantDep) -> Response:
    ckpt = runs.get_checkpoint(session=session, tenant=tenant, checkpoint_id=checkpoint_id)
    if ckpt is None:
        raise not_found("checkpoint", checkpoint_id)
    return blob_response(blobs.checkpoint_blob(ckpt), "application/octet-stream", f"{ckpt.id}.safetensors")


@router.get("/v1/runs/{run_id}/export", response_class=Response,
            responses=binary("application/zip", "a diffusers DDPMPipeline folder, zipped") | CONFLICT)
def export(run: OwnedRun, session: SessionDep) -> Response:
    """The latest weights (EMA) as a diffusers DDPMPipeline folder, zipped (built in a temporary file)."""
    archive = tempfile.TemporaryFile()
    try:
        exports.export(session, run, archive)
    except BaseException:
        archive.close()
        raise
    return file_response(archive, "application/zip", f"{run.id}-diffusers.zip")
