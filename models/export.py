"""Export a checkpoint as a diffusers pipeline folder (or a zip of one).

The folder is what `diffusers.DDPMPipeline.from_pretrained(folder)` expects: `unet/` (the EMA
weights, safetensors), `scheduler/` (DDPMScheduler with the run's schedule and prediction
type) and `model_index.json`; `regdiff_spec.json` records the run that made it.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from diffusers import DDPMPipeline

from models import checkpoint
from models.samplers import make_scheduler

SPEC_FILE = "regdiff_spec.json"


def export_diffusers(state: bytes | Path, folder: Path) -> Path:
    """Write the diffusers folder for `state` (a checkpoint's bytes, or its file: then only the EMA
    weights are read) into `folder` (created if needed); returns it."""
    folder = Path(folder)
    train_state = (checkpoint.from_file(state, groups=("ema",)) if isinstance(state, Path)
                   else checkpoint.from_bytes(state))
    unet = checkpoint.build_network(train_state, weights="ema")
    pipeline = DDPMPipeline(unet=unet, scheduler=make_scheduler(train_state.model_spec, "ddpm"))
    pipeline.save_pretrained(folder, safe_serialization=True)
    spec = {"spec": train_state.spec, "step": train_state.step}
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
    return folder


def export_zip(state: bytes | Path, target: BinaryIO) -> None:
    """The same folder as a zip archive (paths relative to the folder) written into `target`, for
    downloads: a temporary file there keeps the archive out of the server's memory."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_diffusers(state, Path(tmp))
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
