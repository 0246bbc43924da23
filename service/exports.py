"""A run's export: its newest checkpoint as a diffusers pipeline folder, zipped (models/export.py).

The checkpoint is copied from the database into a temporary file a chunk at a time and only its
EMA weights are loaded from there; the archive goes into the caller's file. So an api process
exporting a checkpoint of hundreds of MiB holds about a quarter of it (the weights the pipeline
needs), never the checkpoint or the archive as bytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from models.export import export_zip
from service.runs import latest_checkpoint
from store import blobs
from store.tables import Run


def export(session: Session, run: Run, target: BinaryIO) -> None:
    """Write the zip of the run's newest checkpoint into `target`; 409 while it has none."""
    blob = blobs.checkpoint_blob(latest_checkpoint(session, run))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "checkpoint.safetensors"
        with source.open("wb") as file:
            for chunk in blob.chunks():
                file.write(chunk)
        export_zip(source, target)
