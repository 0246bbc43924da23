"""Server limits on what a run may ask for, and per-tenant quotas on how many may wait.

RunSpec carries the absolute bounds (models/spec.py); an operator tightens them per server
with settings (REGDIFF_MAX_TRAIN_STEPS, ...). A spec over a server limit is a 422 naming the
field and the server's maximum; a tenant over its queue quota gets 429 with Retry-After
(a quota is "try again later", not a conflict with the resource's state).

Running runs per tenant (REGDIFF_MAX_RUNNING_RUNS) are capped where runs start, in the worker:
the api cannot know when a queued run will start. Stored bytes per tenant
(REGDIFF_TENANT_BYTE_QUOTA) gate what creates stored data: runs, sweeps, sample jobs, uploads.
"""

from __future__ import annotations

import struct

from sqlalchemy.orm import Session

from models import checkpoint, datasets
from models.spec import FieldError, RunSpec
from service.errors import Problem, invalid_fields
from store import blobs, quotas, runs
from store import datasets as stored_datasets
from store.settings import Settings
from store.tables import Checkpoint

QUEUE_RETRY_AFTER_SECONDS = 30
MAX_HEADER_BYTES = 16 << 20  # a regdiff checkpoint's header is a few KiB (the spec and tensor offsets)


def check_spec(session: Session, settings: Settings, tenant: str, spec: RunSpec) -> None:
    """422 for every field over this server's limits, and for an init_from this tenant cannot see."""
    errors: list[dict[str, str]] = []
    if spec.train.steps > settings.max_train_steps:
        errors.append({"field": "train.steps", "message": f"at most {settings.max_train_steps} on this server"
                       " (REGDIFF_MAX_TRAIN_STEPS)"})
    if spec.train.batch_size > settings.max_batch_size:
        errors.append({"field": "train.batch_size", "message": f"at most {settings.max_batch_size} on this"
                       " server (REGDIFF_MAX_BATCH_SIZE)"})
    if spec.checkpoint_every is not None and spec.checkpoint_every < settings.min_checkpoint_every:
        errors.append({"field": "checkpoint_every", "message": f"at least {settings.min_checkpoint_every} on this"
                       " server (REGDIFF_MIN_CHECKPOINT_EVERY), or null for no intermediate checkpoints"})
    size = _image_size(session, tenant, spec.dataset)
    if size is not None and size > settings.max_image_size:
        errors.append({"field": "dataset", "message": f"images of {size}x{size}; at most"
                       f" {settings.max_image_size} pixels per side on this server (REGDIFF_MAX_IMAGE_SIZE)"})
    source = (runs.get_checkpoint(session=session, tenant=tenant, checkpoint_id=spec.init_from)
              if spec.init_from is not None else None)
    if spec.init_from is not None and source is None:
        # Another tenant's checkpoint is "no checkpoint", exactly like a missing one.
        errors.append({"field": "init_from", "message": f"no checkpoint {spec.init_from!r}; list a run's"
                       " checkpoints at /v1/runs/{id}/checkpoints"})
    elif source and (mismatch := _model_mismatch(_checkpoint_header(session, source.id), spec)):
        errors.append({"field": mismatch.field, "message": str(mismatch)})
    if errors:
        raise invalid_fields(errors)


def _checkpoint_header(session: Session, checkpoint_id: str) -> bytes:
    """The checkpoint's safetensors header (8-byte little-endian length, then JSON), read alone:
    the weights behind it may be hundreds of MiB and this check needs none of them."""
    head = blobs.read_range(session=session, column=Checkpoint.data, key=checkpoint_id, start=0, length=8) or b""
    if len(head) < 8:
        return head
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:  # not a checkpoint this server wrote; read_metadata refuses it
        return head
    return blobs.read_range(session=session, column=Checkpoint.data, key=checkpoint_id, start=0,
                            length=8 + length) or b""


def _model_mismatch(data: bytes, spec: RunSpec) -> FieldError | None:
    """Why init_from's model cannot seed this spec's, or None. A stored checkpoint whose header
    cannot be read (bytes gone bad) is not the client's fault: the run is accepted and the worker
    fails it with a stored error, rather than this request with a 500."""
    try:
        metadata = checkpoint.read_metadata(data)
    except ValueError:
        return None
    return checkpoint.model_mismatch(metadata, spec)


def check_run_quota(session: Session, settings: Settings, tenant: str, *, new_runs: int = 1,
                    idempotency_key: str | None = None) -> None:
    """429 when `new_runs` more queued runs would pass the tenant's queue quota.

    Checked before the insert, without a lock: two simultaneous requests can overshoot by one
    each, which is fine for a fairness quota (it is not a billing limit). A sweep checks all
    its runs at once with `new_runs=len(runs)`, so it is accepted or refused whole."""
    if quotas.is_replay(session=session, tenant=tenant, idempotency_key=idempotency_key):
        return
    check_storage_quota(session, settings, tenant, what=f"{new_runs} more run(s)" if new_runs > 1 else "a run")
    queued = quotas.run_counts(session=session, tenant=tenant)["queued"]
    if queued + new_runs > settings.max_queued_runs:
        raise Problem(
            429, "Too Many Requests",
            f"{queued} runs of this tenant are queued and {new_runs} more would pass the quota of"
            f" {settings.max_queued_runs} (REGDIFF_MAX_QUEUED_RUNS); retry once some have started,"
            " or cancel some",
            headers={"Retry-After": str(QUEUE_RETRY_AFTER_SECONDS)}, code="quota-exceeded",
        )


def check_sample_quota(session: Session, settings: Settings, tenant: str) -> None:
    """429 when the tenant already has REGDIFF_MAX_ACTIVE_SAMPLES sample jobs queued or running."""
    check_storage_quota(session, settings, tenant, what="a sample job")
    active = quotas.active_samples(session=session, tenant=tenant)
    if active >= settings.max_active_samples:
        raise Problem(
            429, "Too Many Requests",
            f"{active} sample jobs of this tenant are queued or running, the quota is"
            f" {settings.max_active_samples} (REGDIFF_MAX_ACTIVE_SAMPLES); retry once some have finished",
            headers={"Retry-After": str(QUEUE_RETRY_AFTER_SECONDS)},
        )


def check_storage_quota(session: Session, settings: Settings, tenant: str, *, what: str,
                        request_bytes: int = 0) -> None:
    """REGDIFF_TENANT_BYTE_QUOTA (0: off), summed over what the tenant stores (store/quotas.py).

    An upload knows its size (`request_bytes`): larger than the quota alone it is a 413, else a
    429 when it would pass it. A run or a sample job cannot know what it will store, so it is
    refused once the stored bytes reach the quota; one already accepted runs to its end (its
    checkpoints may pass the quota, and retention trims them when it ends). The figures are in
    the detail and in the extension members used_bytes, limit_bytes, request_bytes."""
    limit = settings.tenant_byte_quota
    if not limit:
        return
    if request_bytes > limit:
        message = (f"{request_bytes:,} bytes, larger than this tenant's byte quota of {limit:,}"
                   " (REGDIFF_TENANT_BYTE_QUOTA)")
        raise Problem(413, detail=f"{what}: {message}", errors=[{"field": "file", "message": message}],
                      code="larger-than-storage-quota",
                      extensions={"limit_bytes": limit, "request_bytes": request_bytes})
    used = quotas.stored_bytes(session=session, tenant=tenant)
    if used >= limit or used + request_bytes > limit:
        asked = (f"{what} of {request_bytes:,} bytes would pass it" if request_bytes
                 else f"{what} may store nothing more")
        raise Problem(
            429, detail=f"this tenant stores {used:,} bytes, its quota is {limit:,} (REGDIFF_TENANT_BYTE_QUOTA):"
            f" {asked}; delete runs, sweeps, sample jobs or datasets to make room", code="storage-quota-exceeded",
            extensions={"used_bytes": used, "limit_bytes": limit, "request_bytes": request_bytes},
        )


def _image_size(session: Session, tenant: str, dataset: str) -> int | None:
    if dataset.startswith("upload:"):
        upload = stored_datasets.get_dataset(session=session, tenant=tenant, dataset_id=dataset)
        return None if upload is None else int(upload.info["image_size"])
    info = datasets.BUILTIN.get(dataset)
    return info.image_size if info else None
