"""What a client may choose from: regularizers, network presets, built-in datasets."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter

from models import networks, regularizers

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/regularizers")
def list_regularizers() -> dict[str, list[dict[str, Any]]]:
    return {"data": regularizers.describe()}


@lru_cache
def _presets() -> list[dict[str, Any]]:
    return networks.describe()


@router.get("/presets")
def list_presets() -> dict[str, list[dict[str, Any]]]:
    return {"data": _presets()}
