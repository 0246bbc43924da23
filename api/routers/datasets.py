"""Datasets: the built-in sets and a tenant's uploads (.npz or a .zip of PNG/JPEG images).

service/datasets.py parses and stores an upload; the same content uploaded twice is one
dataset (200 the second time).
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile

from api.deps.auth import TenantDep
from api.deps.session import SessionDep, SettingsDep
from api.schemas import DatasetPublic, DatasetsPublic
from models import datasets
from service import datasets as service
from service.errors import Problem
from store import datasets as stored
from store.settings import Settings

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_CHUNK = 1 << 20
UPLOADS_RETRY_AFTER_SECONDS = 5


def _builtin(name: str, settings: Settings) -> DatasetPublic:
    info = datasets.BUILTIN[name]
    reason = service.unavailable_reason(name, settings)
    return DatasetPublic(id=name, kind="builtin", name=name, dataset=name, image_size=info.image_size,
                         channels=info.channels, count=info.count, num_classes=info.num_classes,
                         labelled=info.num_classes is not None, available=reason is None, note=reason or info.doc,
                         url=f"/v1/datasets/{name}")


def _read_bounded(file: UploadFile, filename: str, limit: int) -> bytes:
    """The upload's bytes, read in chunks and refused (413) as soon as they pass `limit`.

    The body-size middleware stops an oversized request first; this bounds the file part
    itself, whatever the middleware is configured to."""
    if file.size is not None and file.size > limit:
        raise service.too_large(filename, limit)
    out = bytearray()
    while chunk := file.file.read(_CHUNK):
        out += chunk
        if len(out) > limit:
            raise service.too_large(filename, limit)
    return bytes(out)


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    file: Annotated[UploadFile, File(description=".npz (arrays images, optional labels) or .zip of PNG/JPEG")],
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> DatasetPublic:
    """A sync route, so FastAPI runs it in its threadpool: parsing never blocks the event loop.
    At most REGDIFF_MAX_CONCURRENT_UPLOADS are read, parsed and stored at once (each bounded in
    memory, see models/uploads.py); one more is a 503 `uploads-busy` with Retry-After, not a wait that would
    hold a thread and the spooled body."""
    filename = file.filename or ""
    service.check_filename(filename)
    slots: threading.BoundedSemaphore = request.app.state.upload_slots
    if not slots.acquire(blocking=False):
        raise Problem(503, detail=f"{settings.max_concurrent_uploads} uploads are being parsed"
                      " (REGDIFF_MAX_CONCURRENT_UPLOADS); retry shortly", code="uploads-busy",
                      headers={"Retry-After": str(UPLOADS_RETRY_AFTER_SECONDS)})
    try:  # the raw bytes go straight into the service, which drops them once parsed
        dataset, created = service.upload(session, settings, tenant, filename=filename,
                                          raw=_read_bounded(file, filename, settings.max_upload_bytes), name=name)
    finally:
        slots.release()
    public = DatasetPublic.of_upload(dataset)
    response.headers["Location"] = public.url
    if not created:
        response.status_code = 200
    return public


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> DatasetsPublic:
    """The built-ins (with whether their files are on this server), then the tenant's uploads, newest first."""
    builtins = [_builtin(name, settings) for name in datasets.BUILTIN]
    own = [DatasetPublic.of_upload(ds) for ds in stored.list_datasets(session=session, tenant=tenant)]
    return DatasetsPublic(data=builtins + own)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> DatasetPublic:
    """A built-in by name, or an upload by id (`ds_...` or `upload:ds_...`)."""
    if dataset_id in datasets.BUILTIN:
        return _builtin(dataset_id, settings)
    return DatasetPublic.of_upload(service.get_upload(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: Annotated[str, Path(max_length=64)], session: SessionDep, tenant: TenantDep) -> Response:
    """Removes an upload and its bytes; 409 naming the queued or running runs that train on it."""
    service.delete_upload(session, tenant, dataset_id)
    return Response(status_code=204)
