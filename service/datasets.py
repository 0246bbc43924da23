"""Datasets: which built-ins this server can load, and a tenant's uploads.

An upload is parsed by models/uploads.py (no pickle, bounded decompression, safe names), stored
once in its canonical form (uint8 .npz) keyed by that form's sha256, and named in a RunSpec as
`"dataset": "upload:<id>"`. The same content uploaded twice is one dataset.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from models import datasets, networks, uploads
from service import limits
from service.errors import Problem, invalid
from service.lookup import found
from store import datasets as stored
from store.settings import Settings
from store.tables import Dataset


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


def check_filename(filename: str) -> None:
    """A plain file name: nothing is written to disk, but a path in it is a sign of a hostile client."""
    if not filename or "/" in filename or "\\" in filename or "\0" in filename or filename in (".", ".."):
        raise Problem(422, "Invalid upload", f"{filename!r}: unsafe or empty file name; allowed: a plain name"
                      " ending in .npz or .zip", errors=[{"field": "file", "file": filename,
                                                          "message": "unsafe or empty file name"}],
                      code="invalid-upload")


def too_large(filename: str, limit: int) -> Problem:
    message = f"the upload is larger than {limit:,} bytes (REGDIFF_MAX_UPLOAD_BYTES)"
    return Problem(413, "Content Too Large", f"{filename}: {message}",
                   errors=[{"field": "file", "file": filename, "message": message}], code="payload-too-large")


def _limits(settings: Settings) -> uploads.UploadLimits:
    return uploads.UploadLimits(
        max_bytes=settings.max_upload_bytes, max_images=settings.max_upload_images,
        max_image_size=settings.max_image_size, channels=tuple(settings.upload_channels),
        max_uncompressed_bytes=settings.max_upload_uncompressed_bytes,
    )


def _refused(filename: str, exc: uploads.UploadError) -> Problem:
    """422 naming the upload and, inside an archive, the member at fault."""
    where = filename if exc.file == filename else f"{filename}: {exc.file}"
    return Problem(422, "Invalid upload", f"{where}: {exc.message}",
                   errors=[{"field": "file", "file": exc.file, "message": exc.message}], code="invalid-upload")


def upload(session: Session, settings: Settings, tenant: str, *, filename: str, raw: bytes,
           name: str | None) -> tuple[Dataset, bool]:
    """Parse, canonicalise and store an upload (committed); returns (dataset, created).

    The raw bytes are dropped once parsed (pass them as an expression, keep no reference), so
    at most the parsed arrays and their canonical form are held while storing."""
    try:
        data = uploads.parse_upload(filename, raw, _limits(settings))
    except uploads.UploadError as exc:
        raise _refused(filename, exc) from None
    del raw
    canonical = uploads.to_npz_bytes(data)
    sha256 = uploads.content_hash(canonical)
    if stored.find_by_hash(session=session, tenant=tenant, sha256=sha256) is None:  # a repeat stores nothing
        limits.check_storage_quota(session, settings, tenant, what=filename, request_bytes=len(canonical))
    info = {**uploads.describe(data), "size_bytes": len(canonical), "filename": filename}
    dataset, created = stored.create_dataset(session=session, tenant=tenant, name=name or Path(filename).stem[:255],
                                             sha256=sha256, info=info, data=canonical)
    session.commit()
    return dataset, created


def check_run_dataset(session: Session, settings: Settings, tenant: str, dataset: str, preset: str) -> None:
    """A spec's dataset against this server: an upload of this tenant that fits the model preset,
    or a built-in whose files are here, so a run on absent data fails now, not in the worker."""
    if not dataset.startswith("upload:"):
        check_builtin_available(dataset, settings)
        return
    upload = stored.get_dataset(session=session, tenant=tenant, dataset_id=dataset)
    if upload is None:
        raise invalid("dataset", f"no uploaded dataset {dataset!r}; upload one with POST /v1/datasets")
    try:
        networks.check_fits(preset, upload.info["image_size"])
    except ValueError as exc:
        raise invalid("model.preset", str(exc)) from None


def get_upload(session: Session, tenant: str, dataset_id: str) -> Dataset:
    """An upload by id (`ds_...` or `upload:ds_...`); another tenant's answers 404 like a missing one."""
    return found(stored.get_dataset(session=session, tenant=tenant, dataset_id=dataset_id), "dataset", dataset_id)


def delete_upload(session: Session, tenant: str, dataset_id: str) -> None:
    """Removes an upload and its bytes (committed); 404 for another tenant's, like a missing one,
    409 for a built-in. While a queued or running run trains on it, 409 naming those runs: cancel or
    delete them first (a finished run keeps its results, it no longer needs the data)."""
    if dataset_id in datasets.BUILTIN:
        raise Problem(409, detail=f"{dataset_id!r} is a built-in dataset of this server; only uploads can be deleted")
    dataset = get_upload(session, tenant, dataset_id)
    users = stored.active_runs_using(session=session, tenant=tenant, dataset_id=dataset.id)
    if users:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
        raise Problem(409, detail=f"dataset {dataset.id} is used by {len(users)} unfinished run(s): {shown};"
                      " cancel or delete them first", errors=[{"field": "dataset_id", "message": f"used by {shown}"}])
    stored.delete_dataset(session=session, dataset_id=dataset.id)
    session.commit()
