"""Penalties L'(x0_hat) on the denoised image, and the registry clients pick them from.

Each regularizer maps images `(B, C, H, W)` in [-1, 1] to a per-sample penalty `(B,)`,
so that t-masks and weights can combine with it before the batch mean. Its parameters
are a pydantic model (`Params`), which gives the API its JSON schema and its 422s.
Operators add their own through the `regdiff.regularizers` entry-point group; clients
only ever choose by name, so no client code runs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Regularizer:
    """Base class: subclasses set `name`, `Params` and implement `__call__`."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params):
        self.params = params

    def __call__(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B,)
        raise NotImplementedError


class TotalVariationParams(Params):
    norm: Literal["l1", "l2"] = "l1"
    isotropic: bool = False


class TotalVariation(Regularizer):
    """Total variation: mean absolute (l1) or squared (l2) difference between neighbouring
    pixels. Anisotropic sums |dx| and |dy|; isotropic takes sqrt(dx^2 + dy^2). Low TV means
    flat regions and sharp, sparse edges; penalising it removes speckle noise."""

    name = "tv"
    Params = TotalVariationParams

    def __call__(self, x: Tensor) -> Tensor:
        dx = x[..., :, 1:] - x[..., :, :-1]  # (B, C, H, W-1)
        dy = x[..., 1:, :] - x[..., :-1, :]  # (B, C, H-1, W)
        if self.params.isotropic:
            mag2 = dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2
            per_pixel = mag2 if self.params.norm == "l2" else torch.sqrt(mag2 + 1e-12)
            return per_pixel.flatten(1).mean(1)
        if self.params.norm == "l2":
            return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)
        return dx.abs().flatten(1).mean(1) + dy.abs().flatten(1).mean(1)


BUILTIN: dict[str, type[Regularizer]] = {cls.name: cls for cls in (TotalVariation,)}


def _load_registry() -> dict[str, type[Regularizer]]:
    registry = dict(BUILTIN)
    for ep in entry_points(group="regdiff.regularizers"):
        cls = ep.load()
        registry[getattr(cls, "name", ep.name)] = cls
    return registry


REGISTRY: dict[str, type[Regularizer]] = _load_registry()


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"unknown regularizer {name!r}; allowed: {', '.join(REGISTRY)}")


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against the named regularizer; ValueError lists what is allowed."""
    check_name(name)
    try:
        return REGISTRY[name].Params.model_validate(params).model_dump()
    except ValidationError as exc:
        schema = REGISTRY[name].Params.model_json_schema().get("properties", {})
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(
            f"bad params for regularizer {name!r}: {details}; allowed params: {', '.join(schema) or 'none'}"
        ) from None


@dataclass
class WeightedSum:
    """sum_i weight_i * R_i(x), per sample; the parts are kept for logging."""

    terms: list[tuple[float, Regularizer]]

    def __call__(self, x: Tensor) -> Tensor:
        return sum(w * reg(x) for w, reg in self.terms)


def build(terms: list[dict[str, Any]]) -> WeightedSum:
    """Terms as in RunSpec.regularizer: [{"name", "weight", "params"}]."""
    return WeightedSum(
        [(t["weight"], REGISTRY[t["name"]](REGISTRY[t["name"]].Params(**t["params"]))) for t in terms]
    )


def describe() -> list[dict[str, Any]]:
    """Names, docs and parameter JSON schemas, for GET /v1/regularizers."""
    return [
        {"name": name, "doc": " ".join((cls.__doc__ or "").split()), "params_schema": cls.Params.model_json_schema()}
        for name, cls in REGISTRY.items()
    ]
