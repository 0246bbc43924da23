"""Stored PNGs enlarged by nearest-neighbour on the way out: 8x8 digits are invisible at 1:1.

Pixel repetition only (no smoothing), so every stored pixel stays one flat block and a grid
keeps its exact values; the stored bytes are untouched.
"""

from __future__ import annotations

import io
import math
from typing import Annotated

from fastapi import Query
from PIL import Image

from service.errors import invalid

MAX_SCALE = 32
MAX_SIDE = 4096  # px: the largest enlarged side served, whatever the scale
GRID_MIN_WIDTH = 256  # px: a grid without `scale` is enlarged to at least this width

ScaleQuery = Annotated[int | None, Query(
    ge=1, le=MAX_SCALE,
    description=f"enlarge by this integer factor (nearest-neighbour), 1..{MAX_SCALE}; the result may not"
                f" exceed {MAX_SIDE} px on a side",
)]


def scaled_png(png: bytes, scale: int | None, *, min_width: int = 0) -> bytes:
    """`png` enlarged `scale` times; without a scale, the smallest factor reaching `min_width`."""
    image = Image.open(io.BytesIO(png))
    width, height = image.size
    if scale is None:
        fits = max(1, MAX_SIDE // max(width, height))
        scale = min(max(1, math.ceil(min_width / width)), fits, MAX_SCALE)
    elif max(width, height) * scale > MAX_SIDE:
        raise invalid("scale", f"{scale} would make a {width * scale}x{height * scale} px image; at most"
                      f" {MAX_SIDE} px a side, so at most {max(1, MAX_SIDE // max(width, height))} for this one")
    if scale == 1:
        return png
    buffer = io.BytesIO()
    image.resize((width * scale, height * scale), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()
