"""Sample grids as PNG bytes, for previews and the api's grid.png."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

PAD = 2  # pixels between and around the cells
PAD_VALUE = 128  # mid grey: visible against both black and white backgrounds


def grid(images: np.ndarray) -> np.ndarray:
    """uint8 `(N, H, W, C)` -> one uint8 `(rows*(H+PAD)+PAD, cols*(W+PAD)+PAD, C)` near-square grid."""
    assert images.ndim == 4 and images.dtype == np.uint8, (
        f"need uint8 (N, H, W, C), got {images.dtype} {images.shape}"
    )
    n, h, w, c = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, c), PAD_VALUE, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        y, x = PAD + r * (h + PAD), PAD + k * (w + PAD)
        out[y : y + h, x : x + w] = image
    return out


def grid_png(images: np.ndarray, *, scale: int = 1) -> bytes:
    """PNG bytes of `grid(images)`; `scale` enlarges it by pixel repetition (8x8 digits are tiny)."""
    g = grid(images)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    if g.shape[2] not in (1, 3, 4):
        raise ValueError(f"need 1, 3 or 4 channels, got {g.shape[2]}")
    buffer = io.BytesIO()
    Image.fromarray(g[..., 0] if g.shape[2] == 1 else g).save(buffer, format="PNG")  # L, RGB or RGBA
    return buffer.getvalue()
