"""Keyword-only store functions for uploaded datasets and the evaluator's cached classifiers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from store.runs import ACTIVE
from store.tables import ClassifierCache, Dataset, Run


def create_dataset(
    *, session: Session, tenant: str, name: str, sha256: str, info: dict[str, Any], data: bytes
) -> tuple[Dataset, bool]:
    """Insert one dataset per (tenant, content hash); returns (dataset, created).

    The same content uploaded twice is one dataset: the first upload's row is returned. A
    concurrent upload of the same content loses the insert on the unique constraint and gets
    the winner's row, so two requests never make two datasets.
    """
    existing = find_by_hash(session=session, tenant=tenant, sha256=sha256)
    if existing is not None:
        return existing, False
    dataset = Dataset(tenant=tenant, name=name, sha256=sha256, info=info, data=data)
    try:
        with session.begin_nested():
            session.add(dataset)
    except IntegrityError:
        existing = find_by_hash(session=session, tenant=tenant, sha256=sha256)
        if existing is None:
            raise
        return existing, False
    return dataset, True


def find_by_hash(*, session: Session, tenant: str, sha256: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).options(defer(Dataset.data)).where(Dataset.tenant == tenant, Dataset.sha256 == sha256)
    )


def _owned(tenant: str, dataset_id: str) -> Select[tuple[Dataset]]:
    """The one tenant-scoped lookup: another tenant's dataset is not found, like a missing one.

    Takes an id (`ds_...`) or a spec's dataset name (`upload:ds_...`)."""
    return select(Dataset).where(Dataset.id == dataset_id.removeprefix("upload:"), Dataset.tenant == tenant)


def get_dataset(*, session: Session, tenant: str, dataset_id: str) -> Dataset | None:
    """Metadata only (the bytes are deferred)."""
    return session.scalar(_owned(tenant, dataset_id).options(defer(Dataset.data)))


def dataset_bytes(*, session: Session, tenant: str, dataset_id: str) -> bytes | None:
    """The canonical .npz of an upload (for the worker that trains on it)."""
    dataset = session.scalar(_owned(tenant, dataset_id))
    return None if dataset is None else dataset.data


def active_runs_using(*, session: Session, tenant: str, dataset_id: str) -> list[str]:
    """Ids of the tenant's queued or running runs that train on the upload (a spec names it
    `upload:<id>`), oldest first."""
    name = "upload:" + dataset_id.removeprefix("upload:")
    return list(session.scalars(
        select(Run.id).where(Run.tenant == tenant, Run.status.in_(ACTIVE), Run.spec["dataset"].as_string() == name)
        .order_by(Run.created_at, Run.id)
    ))


def delete_dataset(*, session: Session, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))


def list_datasets(*, session: Session, tenant: str) -> list[Dataset]:
    """The tenant's uploads, newest first, without their bytes."""
    return list(
        session.scalars(
            select(Dataset).options(defer(Dataset.data)).where(Dataset.tenant == tenant)
            .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        )
    )


def get_classifier(*, session: Session, key: str) -> bytes | None:
    return session.scalar(select(ClassifierCache.data).where(ClassifierCache.dataset_key == key))


def put_classifier(*, session: Session, key: str, data: bytes) -> bytes:
    """Cache a classifier; if another worker cached one under `key` first, theirs wins and is
    returned, so every run on a dataset is scored by the same bytes."""
    try:
        with session.begin_nested():
            session.add(ClassifierCache(dataset_key=key, data=data))
    except IntegrityError:
        winner = get_classifier(session=session, key=key)
        if winner is None:
            raise
        return winner
    return data
