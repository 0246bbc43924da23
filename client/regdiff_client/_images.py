"""numpy/Pillow helpers, imported only when asked for so the base install stays httpx + tqdm."""

from __future__ import annotations

import importlib
import io
from typing import Any

EXTRA_HINT = "pip install 'regdiff-client[images]'"


def require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for images and arrays: {EXTRA_HINT}") from exc


def npz_to_array(data: bytes) -> Any:
    """The images of a samples.npz as uint8 (N, H, W, C); never unpickles what a server sent."""
    np = require("numpy")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        key = "images" if "images" in npz.files else npz.files[0]
        return npz[key]


def array_to_images(images: Any) -> list[Any]:
    """(N, H, W, C) uint8 -> PIL images; one channel becomes mode "L"."""
    image_module = require("PIL.Image")
    return [image_module.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in images]


def array_to_npz(images: Any, labels: Any = None) -> bytes:
    """An upload body: np.savez of `images` (and `labels`), never pickled objects."""
    np = require("numpy")
    arrays = {"images": np.asarray(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if arrays["images"].dtype == object:
        raise TypeError("images must be a numeric array, not an object array")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
