"""Regularizers: known values, gradients where they should (and should not) flow, the
registry's validation messages, weighted sums, and entry-point plugins from a real
distribution on disk."""

from __future__ import annotations

import logging
import math
import sys
import textwrap

import pytest
import torch

from models import regularizers as R

B, C, H, W = 3, 2, 8, 8

# Every built-in in each of its discrete variants.
VARIANTS = [
    ("tv", {"norm": "l1", "isotropic": False}),
    ("tv", {"norm": "l2", "isotropic": False}),
    ("tv", {"norm": "l1", "isotropic": True}),
    ("tv", {"norm": "l2", "isotropic": True}),
    ("laplacian", {"padding": "replicate"}),
    ("laplacian", {"padding": "reflect"}),
    ("l1", {"background": -1.0}),
    ("l1", {"background": 0.5}),
    ("range", {"hinge": "squared"}),
    ("range", {"hinge": "linear", "lo": -0.5, "hi": 0.8}),
    ("high_freq", {"cutoff": 0.25}),
    ("high_freq", {"cutoff": 0.5}),
    ("symmetry", {"axis": "horizontal", "norm": "l1"}),
    ("symmetry", {"axis": "vertical", "norm": "l2"}),
]
IDS = [f"{name}-{'-'.join(map(str, p.values()))}" for name, p in VARIANTS]


def make(name: str, **params) -> R.Regularizer:
    return R.build([{"name": name, "params": params}]).terms[0][1]


def checkerboard(h: int = H, w: int = W) -> torch.Tensor:
    """+-1 alternating pixels, (B, C, h, w)."""
    i, j = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return ((-1.0) ** (i + j)).expand(B, C, h, w).clone()


def zero_penalty_image(name: str, params: dict) -> torch.Tensor:
    """An image each regularizer should neither penalise nor push anywhere."""
    g = torch.Generator().manual_seed(1)
    rand = torch.rand(B, C, H, W, generator=g) * 2 - 1
    if name in ("tv", "laplacian"):
        return torch.full((B, C, H, W), 0.3)
    if name == "l1":
        return torch.full((B, C, H, W), params["background"])
    if name == "range":
        lo, hi = params.get("lo", -1.0), params.get("hi", 1.0)
        return lo + (hi - lo) * (rand + 1) / 2
    if name == "high_freq":  # one cycle per image: 1/8 cycles/pixel, below any cutoff here
        y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        wave = 0.5 * torch.cos(2 * math.pi * y / H) + 0.3 * torch.sin(2 * math.pi * x / W)
        return wave.expand(B, C, H, W)
    if name == "symmetry":
        dim = -1 if params["axis"] == "horizontal" else -2
        return (rand + rand.flip(dim)) / 2
    raise AssertionError(name)


def value_and_grad(reg: R.Regularizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = reg(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_random_image_gives_finite_value_and_gradient(name, params):
    x = 1.5 * torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))  # some out of range
    value, grad = value_and_grad(make(name, **params), x)
    assert value.shape == (B,)
    assert value.dtype == torch.float32
    assert torch.isfinite(value).all() and (value > 0).all()
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all(), "every sample must get a gradient"


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_image_that_satisfies_the_prior_gives_zero_value_and_gradient(name, params):
    value, grad = value_and_grad(make(name, **params), zero_penalty_image(name, params))
    assert torch.allclose(value, torch.zeros(B), atol=1e-6)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


@pytest.mark.parametrize(
    ("norm", "isotropic", "expected"),
    [
        # every neighbour differs by 2: anisotropic sums the mean over dx and over dy
        ("l1", False, 2 + 2),
        ("l2", False, 2**2 + 2**2),
        ("l1", True, math.sqrt(2**2 + 2**2)),
        ("l2", True, 2**2 + 2**2),
    ],
)
def test_tv_of_checkerboard(norm, isotropic, expected):
    value = make("tv", norm=norm, isotropic=isotropic)(checkerboard())
    assert torch.allclose(value, torch.full((B,), float(expected)))


def test_laplacian_of_checkerboard():
    # interior: 4 neighbours of -v around v -> -8v. Replicated edges see v itself instead of
    # one (edge) or two (corner) neighbours: -6v and -4v.
    h, w = 5, 6
    interior, edges, corners = (h - 2) * (w - 2), 2 * (h - 2 + w - 2), 4
    replicate = (64 * interior + 36 * edges + 16 * corners) / (h * w)
    x = checkerboard(h, w)
    assert torch.allclose(make("laplacian", padding="replicate")(x), torch.full((B,), replicate))
    assert torch.allclose(make("laplacian", padding="reflect")(x), torch.full((B,), 64.0))


def test_laplacian_ignores_linear_ramps_inside():
    ramp = torch.linspace(-1, 1, W).expand(B, C, H, W)
    value = make("laplacian", padding="replicate")(ramp)
    # only the two replicated columns bend: second difference +-step there
    step = 2 / (W - 1)
    assert torch.allclose(value, torch.full((B,), 2 * H * step**2 / (H * W)))


def test_l1_known_value():
    x = torch.zeros(B, C, H, W)
    x[:, :, 0, 0] = 1.0
    expected = (1 * (C * H * W - C) + 2 * C) / (C * H * W)  # |0 - (-1)| everywhere, |1 - (-1)| at one pixel
    assert torch.allclose(make("l1")(x), torch.full((B,), expected))


def test_range_known_values():
    x = torch.full((B, C, H, W), 1.5)
    x[:, :, :4] = -1.25  # half the pixels 0.25 below, half 0.5 above
    assert torch.allclose(make("range", hinge="linear")(x), torch.full((B,), (0.25 + 0.5) / 2))
    assert torch.allclose(make("range", hinge="squared")(x), torch.full((B,), (0.25**2 + 0.5**2) / 2))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_high_freq_is_size_independent(size):
    # all of a checkerboard's energy (mean x^2 = 1) sits at (0.5, 0.5), above any cutoff
    assert torch.allclose(make("high_freq", cutoff=0.5)(checkerboard(size, size)), torch.ones(B))
    # a stripe at 3/8 cycles/pixel counts above cutoff 0.25 but not above 0.4
    x = torch.cos(2 * math.pi * 3 / 8 * torch.arange(size)).expand(B, C, size, size)
    assert torch.allclose(make("high_freq", cutoff=0.25)(x), torch.full((B,), 0.5), atol=1e-5)
    assert torch.allclose(make("high_freq", cutoff=0.4)(x), torch.zeros(B), atol=1e-5)


def test_symmetry_known_values():
    x = torch.ones(B, C, H, W)
    x[..., W // 2 :] = -1  # left white, right black: mirror differs by 2 everywhere
    assert torch.allclose(make("symmetry", axis="horizontal", norm="l1")(x), torch.full((B,), 2.0))
    assert torch.allclose(make("symmetry", axis="horizontal", norm="l2")(x), torch.full((B,), 4.0))
    assert torch.allclose(make("symmetry", axis="vertical")(x), torch.zeros(B))


def test_build_is_the_weighted_sum_and_keeps_the_parts():
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    total = R.build(
        [
            {"name": "tv", "weight": 0.5},
            {"name": "tv", "weight": 2.0, "params": {"norm": "l2"}},
            {"name": "range", "weight": 3.0, "params": {"hinge": "linear"}},
        ]
    )
    tv1, tv2, rng = make("tv")(x), make("tv", norm="l2")(x), make("range", hinge="linear")(x)
    assert torch.allclose(total(x), 0.5 * tv1 + 2.0 * tv2 + 3.0 * rng)
    parts = total.parts(x)
    assert list(parts) == ["tv", "tv#2", "range"]
    assert torch.allclose(parts["tv#2"], tv2)
    assert torch.allclose(total.combine(parts), total(x))


def test_build_accepts_runspec_terms_and_empty_lists():
    from models.spec import RegularizerTerm

    x = torch.randn(B, C, H, W)
    term = RegularizerTerm(name="l1", weight=2.0, params={"background": 0.0})
    assert torch.allclose(R.build([term])(x), 2 * x.abs().flatten(1).mean(1))
    assert torch.equal(R.build([])(x), torch.zeros(B))


def test_low_precision_input_is_evaluated_in_fp32():
    x = (0.01 * torch.randn(B, C, H, W)).to(torch.bfloat16)
    value = R.build([{"name": "tv", "params": {"isotropic": True}}])(x)
    assert value.dtype == torch.float32
    assert torch.allclose(value, make("tv", isotropic=True)(x.float()))


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown regularizer 'tvv'; allowed: tv, laplacian, l1, range"):
        R.validate_params("tvv", {})
    with pytest.raises(ValueError, match="unknown regularizer"):
        R.build([{"name": "tvv"}])


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("tv", {"normm": "l1"}, r"normm: Extra inputs are not permitted; allowed params: norm, isotropic"),
        ("tv", {"norm": "l3"}, r"norm: Input should be 'l1' or 'l2'"),
        ("symmetry", {"axis": "diagonal"}, r"Input should be 'horizontal' or 'vertical'"),
        ("high_freq", {"cutoff": 0.6}, r"cutoff: Input should be less than or equal to 0.5"),
        ("high_freq", {"cutoff": 0}, r"cutoff: Input should be greater than 0"),
        ("range", {"lo": 1, "hi": 0}, r"lo \(1.0\) must be < hi \(0.0\)"),
    ],
)
def test_bad_params_name_the_problem_and_the_allowed_values(name, params, message):
    with pytest.raises(ValueError, match=message):
        R.validate_params(name, params)


def test_validate_params_fills_defaults():
    assert R.validate_params("range", {"hi": 0.9}) == {"lo": -1.0, "hi": 0.9, "hinge": "squared"}


def test_describe_documents_every_parameter():
    described = {d["name"]: d for d in R.describe()}
    assert set(R.BUILTIN) <= set(described)
    for name in R.BUILTIN:
        entry = described[name]
        assert len(entry["doc"]) > 80
        assert entry["params_schema"]["additionalProperties"] is False
        for field, schema in entry["params_schema"]["properties"].items():
            assert schema.get("description"), f"{name}.{field} has no description"
            assert "default" in schema, f"{name}.{field} has no default"


PLUGIN_MODULE = '''
from pydantic import Field
from models.regularizers import Params, Regularizer

class EnergyParams(Params):
    scale: float = Field(1.0, gt=0, description="multiplies the energy")

class Energy(Regularizer):
    """Mean squared pixel value, scaled."""
    name = "rdtest_energy"
    Params = EnergyParams

    def __call__(self, x):
        return self.params.scale * x.square().flatten(1).mean(1)

class FakeTV(Energy):
    name = "tv"

class NotARegularizer:
    name = "rdtest_not_a_regularizer"
'''

ENTRY_POINTS = """
[regdiff.regularizers]
energy = rdtest_plugin:Energy
clash = rdtest_plugin:FakeTV
not_a_regularizer = rdtest_plugin:NotARegularizer
missing_attribute = rdtest_plugin:DoesNotExist
broken_import = rdtest_plugin_broken:Anything
"""


@pytest.fixture
def plugin_dist(tmp_path):
    """An installed distribution `rdtest-plugin` on sys.path with good and bad entry points."""
    (tmp_path / "rdtest_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (tmp_path / "rdtest_plugin_broken.py").write_text("raise RuntimeError('plugin bug at import')\n")
    info = tmp_path / "rdtest_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rdtest-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        for module in ("rdtest_plugin", "rdtest_plugin_broken"):
            sys.modules.pop(module, None)
        R.reload_registry()


def test_entry_point_plugin_is_discovered_and_bad_ones_are_skipped(plugin_dist, caplog):
    registry = R.REGISTRY  # reloading keeps this object current for everyone holding it
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        R.reload_registry()

    assert "rdtest_energy" in registry
    assert registry["tv"] is R.TotalVariation, "built-ins win a name clash"
    assert "rdtest_not_a_regularizer" not in registry
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for entry in ("clash", "not_a_regularizer", "missing_attribute", "broken_import"):
        assert f"skipping regularizer plugin {entry!r}" in warnings
    assert "plugin bug at import" in warnings

    assert R.validate_params("rdtest_energy", {"scale": 2}) == {"scale": 2.0}
    x = torch.full((B, C, H, W), 0.5)
    energy = R.build([{"name": "rdtest_energy", "params": {"scale": 2}}])
    assert torch.allclose(energy(x), torch.full((B,), 0.5))
    assert "rdtest_energy" in {d["name"] for d in R.describe()}


def test_registry_is_back_to_builtins_without_the_plugin():
    assert "rdtest_energy" not in R.REGISTRY
