"""Datasets: the built-in sets and a tenant's uploads (.npz or a .zip of PNG/JPEG images).

An upload is parsed by models/uploads.py (no pickle, bounded decompression, safe names), stored
once in its canonical form (uint8 .npz) keyed by that form's sha256, and named in a RunSpec as
`"dataset": "upload:<id>"`. The same content uploaded twice is one dataset (200 the second time).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import PROBLEM_RESPONSES, Problem, invalid, not_found
from api.schemas import DatasetPublic, DatasetsPublic
from models import datasets, uploads
from store import datasets as stored
from store.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROBLEM_RESPONSES)
_CHUNK = 1 << 20
UPLOADS_RETRY_AFTER_SECONDS = 5


def unavailable_reason(name: str, settings: Settings) -> str | None:
    """Why a built-in cannot load on this server (files absent from REGDIFF_DATA_DIR), or None."""
    if settings.allow_download or (settings.cache_dir / f"{name}.npz").is_file():
        return None
    try:
        datasets.check_available(name, settings.resolved_data_dir)
    except datasets.DatasetUnavailable as exc:
        return f"{exc} (<data_dir> is this server's REGDIFF_DATA_DIR)"  # never its absolute path
    return None


def check_builtin_available(name: str, settings: Settings) -> None:
    """422 naming `dataset` at POST time, so a run on absent files fails before it is queued."""
    reason = unavailable_reason(name, settings)
    if reason is not None:
        raise invalid("dataset", reason)


def _builtin(name: str, settings: Settings) -> DatasetPublic:
    info = datasets.BUILTIN[name]
    reason = unavailable_reason(name, settings)
    return DatasetPublic(id=name, kind="builtin", name=name, dataset=name, image_size=info.image_size,
                         channels=info.channels, count=info.count, num_classes=info.num_classes,
                         labelled=info.num_classes is not None, available=reason is None, note=reason or info.doc,
                         url=f"/v1/datasets/{name}")


def _limits(settings: Settings) -> uploads.UploadLimits:
    return uploads.UploadLimits(
        max_bytes=settings.max_upload_bytes, max_images=settings.max_upload_images,
        max_image_size=settings.max_image_size, channels=tuple(settings.upload_channels),
        max_uncompressed_bytes=settings.max_upload_uncompressed_bytes,
    )


def _read_bounded(file: UploadFile, filename: str, limit: int) -> bytes:
    """The upload's bytes, read in chunks and refused (413) as soon as they pass `limit`.

    The body-size middleware stops an oversized request first; this bounds the file part
    itself, whatever the middleware is configured to."""
    if file.size is not None and file.size > limit:
        raise _too_large(filename, limit)
    out = bytearray()
    while chunk := file.file.read(_CHUNK):
        out += chunk
        if len(out) > limit:
            raise _too_large(filename, limit)
    return bytes(out)


def _too_large(filename: str, limit: int) -> Problem:
    message = f"the upload is larger than {limit:,} bytes (REGDIFF_MAX_UPLOAD_BYTES)"
    return Problem(413, "Content Too Large", f"{filename}: {message}",
                   errors=[{"field": "file", "file": filename, "message": message}], code="payload-too-large")


def _refused(filename: str, exc: uploads.UploadError) -> Problem:
    """422 naming the upload and, inside an archive, the member at fault."""
    where = filename if exc.file == filename else f"{filename}: {exc.file}"
    return Problem(422, "Invalid upload", f"{where}: {exc.message}",
                   errors=[{"field": "file", "file": exc.file, "message": exc.message}], code="invalid-upload")


def _check_filename(filename: str) -> None:
    """A plain file name: nothing is written to disk, but a path in it is a sign of a hostile client."""
    if not filename or "/" in filename or "\\" in filename or "\0" in filename or filename in (".", ".."):
        raise Problem(422, "Invalid upload", f"{filename!r}: unsafe or empty file name; allowed: a plain name"
                      " ending in .npz or .zip", errors=[{"field": "file", "file": filename,
                                                          "message": "unsafe or empty file name"}],
                      code="invalid-upload")


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
    At most REGDIFF_MAX_CONCURRENT_UPLOADS parse at once (each bounded in memory, see
    models/uploads.py); one more is a 503 `uploads-busy` with Retry-After, not a wait that would
    hold a thread and the spooled body."""
    filename = file.filename or ""
    _check_filename(filename)
    slots: threading.BoundedSemaphore = request.app.state.upload_slots
    if not slots.acquire(blocking=False):
        raise Problem(503, detail=f"{settings.max_concurrent_uploads} uploads are being parsed"
                      " (REGDIFF_MAX_CONCURRENT_UPLOADS); retry shortly", code="uploads-busy",
                      headers={"Retry-After": str(UPLOADS_RETRY_AFTER_SECONDS)})
    try:
        canonical, info = _parse(file, filename, settings)
    finally:
        slots.release()
    dataset, created = stored.create_dataset(session=session, tenant=tenant, name=name or Path(filename).stem[:255],
                                             sha256=uploads.content_hash(canonical), info=info, data=canonical)
    session.commit()
    if not created:
        response.status_code = 200
    return DatasetPublic.of_upload(dataset)


def _parse(file: UploadFile, filename: str, settings: Settings) -> tuple[bytes, dict]:
    """The upload -> its canonical bytes and shape facts; the raw bytes are dropped on return."""
    raw = _read_bounded(file, filename, settings.max_upload_bytes)
    try:
        data = uploads.parse_upload(filename, raw, _limits(settings))
    except uploads.UploadError as exc:
        raise _refused(filename, exc) from None
    del raw
    canonical = uploads.to_npz_bytes(data)
    return canonical, {**uploads.describe(data), "size_bytes": len(canonical), "filename": filename}


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
    ds = stored.get_dataset(session=session, tenant=tenant, dataset_id=dataset_id.removeprefix("upload:"))
    if ds is None:
        raise not_found("dataset", dataset_id)
    return DatasetPublic.of_upload(ds)
