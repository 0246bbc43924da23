"""Checkpoint downloads (safetensors) and a run's export as a diffusers folder."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps.auth import TenantDep
from api.deps.ownership import OwnedRun
from api.deps.session import SessionDep
from api.openapi import CONFLICT, binary
from models.export import export_zip
from service import runs as service
from service.errors import not_found
from store import runs

router = APIRouter(tags=["checkpoints"])


@router.get("/v1/checkpoints/{checkpoint_id}", response_class=Response,
            responses=binary("application/octet-stream", "the weights as safetensors"))
def download_checkpoint(checkpoint_id: Annotated[str, Path(max_length=64)], session: SessionDep,
                        tenant: TenantDep) -> Response:
    ckpt = runs.get_checkpoint(session=session, tenant=tenant, checkpoint_id=checkpoint_id)
    if ckpt is None:
        raise not_found("checkpoint", checkpoint_id)
    return Response(ckpt.data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{ckpt.id}.safetensors"'})


@router.get("/v1/runs/{run_id}/export", response_class=Response,
            responses=binary("application/zip", "a diffusers DDPMPipeline folder, zipped") | CONFLICT)
def export(run: OwnedRun, session: SessionDep) -> Response:
    """The latest weights (EMA) as a diffusers DDPMPipeline folder, zipped."""
    ckpt = service.latest_checkpoint(session, run)
    return Response(export_zip(ckpt.data), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{run.id}-diffusers.zip"'})
