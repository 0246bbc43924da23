"""Datasets: upload your own images (an .npz or image archive the server accepts) by path or array."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._images import array_to_npz
from .._plan import Plan, create, fetch, paginate, remove
from ..types import Dataset
from ._base import SyncResource


def _upload(filename: str, content: bytes, name: str | None) -> Plan[Dataset]:
    files = {"file": (filename, content, "application/octet-stream")}
    return create("/v1/datasets", Dataset.from_json, files=files, data={"name": name} if name else None)


class Datasets(SyncResource):
    def upload(self, data: str | Path | Any, *, labels: Any = None, name: str | None = None) -> Dataset:
        """A file path is sent as is; an (N, H, W[, C]) uint8 array (+ labels) as an np.savez .npz."""
        if isinstance(data, (str, Path)):
            if labels is not None:
                raise ValueError("labels go inside the file when uploading a path")
            path = Path(data)
            return self._runner.run(_upload(path.name, path.read_bytes(), name))
        return self._runner.run(_upload(f"{name or 'dataset'}.npz", array_to_npz(data, labels), name))

    def list(self) -> Iterator[Dataset]:
        return self._runner.iterate(paginate("/v1/datasets", Dataset.from_json))

    def get(self, dataset_id: str) -> Dataset:
        return self._runner.run(fetch(f"/v1/datasets/{dataset_id}", Dataset.from_json))

    def delete(self, dataset_id: str) -> None:
        """Removes an upload; a ConflictError names the queued or running runs that still use it."""
        self._runner.run(remove(f"/v1/datasets/{dataset_id}"))
