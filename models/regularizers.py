"""Penalties L'(x0_hat) on the denoised image, and the registry clients pick them from.

Each regularizer maps images `(B, C, H, W)` in [-1, 1] to a per-sample penalty `(B,)`,
so that t-masks and weights can combine with it before the batch mean. Its parameters
are a pydantic model (`Params`), which gives the API its JSON schema and its 422s.
Operators add their own through the `regdiff.regularizers` entry-point group; clients
only ever choose by name, so no client code runs here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "regdiff.regularizers"

Norm = Literal["l1", "l2"]


class Params(BaseModel):
    """Base of every regularizer's parameters: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class Regularizer:
    """Base class: subclasses set `name`, `Params` and implement `__call__`. `params`
    defaults to `Params()`, so evaluation can measure every registered one as is."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None):
        self.params = self.Params() if params is None else params

    def __call__(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B,)
        raise NotImplementedError


def _per_sample_mean(t: Tensor) -> Tensor:
    return t.flatten(1).mean(1)


def _pointwise(d: Tensor, norm: Norm) -> Tensor:
    return d.abs() if norm == "l1" else d.square()


# Smooths sqrt at 0 so isotropic TV has a finite gradient on flat regions. Subtracting
# sqrt(eps) keeps flat images at exactly 0; elsewhere the value moves by under 1e-6.
_TV_EPS = 1e-12


class TotalVariationParams(Params):
    norm: Norm = Field(
        "l1", description="l1: mean |gradient| (keeps edges); l2: mean squared gradient (blurs)"
    )
    isotropic: bool = Field(
        False, description="true: |(dx, dy)| per pixel (rotation invariant); false: |dx| + |dy| separately"
    )


class TotalVariation(Regularizer):
    """Total variation: mean absolute (l1) or squared (l2) difference between neighbouring
    pixels. Anisotropic sums |dx| and |dy|; isotropic takes sqrt(dx^2 + dy^2). Low TV means
    flat regions and sharp, sparse edges; penalising it removes speckle noise. Use l1 for
    piecewise-constant images such as digits or icons, l2 for a plain smoothness prior."""

    name = "tv"
    Params = TotalVariationParams

    def __call__(self, x: Tensor) -> Tensor:
        dx, dy = x.diff(dim=-1), x.diff(dim=-2)  # (B, C, H, W-1), (B, C, H-1, W)
        if not self.params.isotropic:
            return sum(_per_sample_mean(_pointwise(d, self.params.norm)) for d in (dx, dy))
        mag2 = dx[..., :-1, :].square() + dy[..., :, :-1].square()  # both at pixel (i, j)
        if self.params.norm == "l2":
            return _per_sample_mean(mag2)
        return _per_sample_mean(torch.sqrt(mag2 + _TV_EPS) - _TV_EPS**0.5)


class LaplacianParams(Params):
    padding: Literal["replicate", "reflect"] = Field(
        "replicate",
        description="how the border is extended: replicate repeats the edge pixel, reflect mirrors"
        " the image about it (needs H, W >= 2)",
    )


class Laplacian(Regularizer):
    """Laplacian energy: mean squared 5-point discrete Laplacian (curvature). Unlike TV it
    does not penalise linear ramps, only bends, so it favours smooth shading and gradients
    over flat patches; it also punishes isolated speckles strongly. Use it for natural
    smooth images; for images made of flat regions TV fits better."""

    name = "laplacian"
    Params = LaplacianParams

    def __call__(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode=self.params.padding)
        lap = padded.diff(n=2, dim=-1)[..., 1:-1, :] + padded.diff(n=2, dim=-2)[..., :, 1:-1]
        return _per_sample_mean(lap.square())


class L1Params(Params):
    background: float = Field(
        -1.0,
        ge=-1,
        le=1,
        allow_inf_nan=False,
        description="the value pixels are pulled towards (-1 is black, 1 white)",
    )


class L1Sparsity(Regularizer):
    """L1 sparsity: mean |x - background|. Pushes most pixels to exactly the background
    value while leaving a few far from it, so it suits sparse images on a plain background
    (digits, strokes, stars); on dense natural images it only darkens them."""

    name = "l1"
    Params = L1Params

    def __call__(self, x: Tensor) -> Tensor:
        return _per_sample_mean((x - self.params.background).abs())


class RangeParams(Params):
    lo: float = Field(-1.0, ge=-2, le=2, allow_inf_nan=False, description="lower end of the allowed range")
    hi: float = Field(1.0, ge=-2, le=2, allow_inf_nan=False, description="upper end of the allowed range")
    hinge: Literal["squared", "linear"] = Field(
        "squared", description="squared: mean squared excess (gentle near the edge); linear: mean excess"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RangeParams:
        if self.lo >= self.hi:
            raise ValueError(f"lo ({self.lo}) must be < hi ({self.hi})")
        return self


class Range(Regularizer):
    """Range penalty: mean hinge of how far pixels fall outside [lo, hi]; zero inside. The
    model's denoised estimate can overshoot the data range, and sampling then clips it;
    this teaches it to stay in range instead, without touching in-range images. Use it
    with other terms, or alone to reduce saturated, clipped samples."""

    name = "range"
    Params = RangeParams

    def __call__(self, x: Tensor) -> Tensor:
        excess = F.relu(x - self.params.hi) + F.relu(self.params.lo - x)
        return _per_sample_mean(excess.square() if self.params.hinge == "squared" else excess)


class HighFrequencyParams(Params):
    cutoff: float = Field(
        0.25,
        gt=0,
        le=0.5,
        allow_inf_nan=False,
        description="radial frequency in cycles/pixel above which energy counts (0.5 is Nyquist;"
        " the checkerboard at (0.5, 0.5) always counts)",
    )


class HighFrequency(Regularizer):
    """High-frequency energy: mean squared value of the part of the image whose 2D spatial
    frequency lies above `cutoff` (an ideal radial high-pass via the FFT). By Parseval it
    is a per-pixel energy, so it does not depend on image size. Suppresses fine texture,
    grid and checkerboard artefacts while leaving shapes alone; lower the cutoff to blur."""

    name = "high_freq"
    Params = HighFrequencyParams

    def __call__(self, x: Tensor) -> Tensor:
        spectrum = torch.fft.fft2(x, norm="ortho")  # ortho: sum |X|^2 == sum x^2
        energy = spectrum.real.square() + spectrum.imag.square()
        return _per_sample_mean(energy * _beyond(self.params.cutoff, x.shape[-2:], x.device))


def _beyond(cutoff: float, size: torch.Size, device: torch.device) -> Tensor:
    """(H, W) mask of the FFT bins whose radial frequency exceeds `cutoff` cycles/pixel."""
    fy = torch.fft.fftfreq(size[0], device=device)
    fx = torch.fft.fftfreq(size[1], device=device)
    return fy[:, None].square() + fx[None, :].square() > cutoff**2


class SymmetryParams(Params):
    axis: Literal["horizontal", "vertical"] = Field(
        "horizontal",
        description="horizontal: compare with the left-right mirror image;"
        " vertical: with the upside-down one",
    )
    norm: Norm = Field("l1", description="l1: mean |x - flip(x)|; l2: mean squared difference")


class Symmetry(Regularizer):
    """Flip consistency: mean difference between the image and its mirror image. Zero for
    mirror-symmetric images, so it pulls samples towards symmetry about the centre line.
    Makes sense only for data that is symmetric (faces seen from the front, many glyphs,
    flowers); on digits it distorts most classes."""

    name = "symmetry"
    Params = SymmetryParams

    def __call__(self, x: Tensor) -> Tensor:
        dim = -1 if self.params.axis == "horizontal" else -2
        return _per_sample_mean(_pointwise(x - x.flip(dim), self.params.norm))


BUILTIN: dict[str, type[Regularizer]] = {
    cls.name: cls for cls in (TotalVariation, Laplacian, L1Sparsity, Range, HighFrequency, Symmetry)
}


def _plugin_problem(cls: Any) -> str | None:
    """Why a loaded entry point cannot serve as a regularizer, or None if it can."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        return f"{cls!r} is not a Regularizer subclass"
    if not isinstance(getattr(cls, "name", None), str):
        return f"{cls.__qualname__} sets no string `name`"
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, BaseModel)):
        return f"{cls.__qualname__}.Params is not a pydantic model"
    try:
        cls.Params.model_json_schema()  # GET /v1/regularizers must not fail on it later
    except Exception as exc:  # noqa: BLE001 - any failure disqualifies the plugin
        return f"{cls.__qualname__}.Params has no JSON schema: {exc}"
    return None


def _load_plugin(ep: EntryPoint) -> type[Regularizer] | None:
    """The plugin's class, or None (with a warning): one bad plugin must not stop the service."""
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - plugins may fail in any way on import
        log.warning("skipping regularizer plugin %r (%s): failed to load: %r", ep.name, ep.value, exc)
        return None
    problem = _plugin_problem(cls)
    if problem:
        log.warning("skipping regularizer plugin %r (%s): %s", ep.name, ep.value, problem)
        return None
    return cls


def _load_registry() -> dict[str, type[Regularizer]]:
    registry = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = _load_plugin(ep)
        if cls is None or registry.get(cls.name) is cls:
            continue
        if cls.name in registry:
            log.warning(
                "skipping regularizer plugin %r (%s): name %r is taken by %s",
                ep.name, ep.value, cls.name, registry[cls.name].__qualname__,
            )
            continue
        registry[cls.name] = cls
    return registry


REGISTRY: dict[str, type[Regularizer]] = _load_registry()


def reload_registry() -> None:
    """Rescan the entry points, updating REGISTRY in place so that references to it stay valid."""
    fresh = _load_registry()
    REGISTRY.clear()
    REGISTRY.update(fresh)


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"unknown regularizer {name!r}; allowed: {', '.join(REGISTRY)}")


def _parse_params(name: str, params: Mapping[str, Any]) -> Params:
    check_name(name)
    try:
        return REGISTRY[name].Params.model_validate(params)
    except ValidationError as exc:
        schema = REGISTRY[name].Params.model_json_schema().get("properties", {})
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
        raise ValueError(
            f"bad params for regularizer {name!r}: {details}; allowed params: {', '.join(schema) or 'none'}"
        ) from None


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against the named regularizer; ValueError lists what is allowed."""
    return _parse_params(name, params).model_dump()


def _at_least_fp32(x: Tensor) -> Tensor:
    """Penalties take differences of nearby pixels and means over many; bf16/fp16 (autocast) loses both."""
    return x.float() if x.dtype.itemsize < 4 else x


@dataclass
class WeightedSum:
    """sum_i weight_i * R_i(x), per sample; `parts(x)` gives the unweighted terms for logging."""

    terms: list[tuple[float, Regularizer]]
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        """One label per term: its name, with `#k` on the k-th repeat of a name."""
        seen: Counter[str] = Counter()
        self.labels = []
        for _, reg in self.terms:
            seen[reg.name] += 1
            self.labels.append(reg.name if seen[reg.name] == 1 else f"{reg.name}#{seen[reg.name]}")

    def parts(self, x: Tensor) -> dict[str, Tensor]:
        """Unweighted per-sample penalty of each term, by label (computed in at least fp32)."""
        x = _at_least_fp32(x)
        return {label: reg(x) for label, (_, reg) in zip(self.labels, self.terms)}

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        """The weighted total from `parts(x)`, so logging both costs one evaluation."""
        return sum(w * parts[label] for label, (w, _) in zip(self.labels, self.terms))

    def __call__(self, x: Tensor) -> Tensor:
        x = _at_least_fp32(x)
        return self.combine(self.parts(x)) if self.terms else x.new_zeros(x.shape[0])


def _as_dict(term: Any) -> Mapping[str, Any]:
    return term if isinstance(term, Mapping) else term.model_dump()


def build(terms: list[Any]) -> WeightedSum:
    """Terms as in RunSpec.regularizer: dicts `{"name", "weight"=1, "params"={}}` or the
    RegularizerTerm models themselves; names and params are validated (ValueError)."""
    built = []
    for term in map(_as_dict, terms):
        params = _parse_params(term["name"], term.get("params", {}))
        built.append((term.get("weight", 1.0), REGISTRY[term["name"]](params)))
    return WeightedSum(built)


def describe() -> list[dict[str, Any]]:
    """Names, docs and parameter JSON schemas, for GET /v1/regularizers."""
    return [
        {
            "name": name,
            "doc": " ".join((cls.__doc__ or "").split()),
            "params_schema": cls.Params.model_json_schema(),
        }
        for name, cls in REGISTRY.items()
    ]
