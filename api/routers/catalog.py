"""What a client may choose from: regularizers and network presets (datasets: api/routers/datasets.py)."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from api.schemas import PresetsPublic, RegularizersPublic
from models import networks, regularizers

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/regularizers", response_model=RegularizersPublic)
def list_regularizers() -> RegularizersPublic:
    return RegularizersPublic.model_validate({"data": regularizers.describe()})


@lru_cache
def _presets() -> PresetsPublic:
    return PresetsPublic.model_validate({"data": networks.describe()})


@router.get("/presets", response_model=PresetsPublic)
def list_presets() -> PresetsPublic:
    return _presets()
