"""Checkpoints: the safetensors training state a run saved every `checkpoint_every` steps."""

from __future__ import annotations

from pathlib import Path

from .._plan import download, fetch
from ..types import Checkpoint
from ._base import SyncResource


def _list_body(body: dict) -> list[Checkpoint]:
    return [Checkpoint.from_json(raw) for raw in body["data"]]


class Checkpoints(SyncResource):
    def list(self, run_id: str) -> list[Checkpoint]:
        return self._runner.run(fetch(f"/v1/runs/{run_id}/checkpoints", _list_body))

    def download(self, checkpoint_id: str, path: str | Path) -> Path:
        """Save the checkpoint's safetensors bytes (load with safetensors, never pickle)."""
        return self._runner.run(download(f"/v1/checkpoints/{checkpoint_id}", path))
