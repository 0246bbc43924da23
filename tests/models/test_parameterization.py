import pytest
import torch

from models import parameterization as p
from models.schedule import make_schedule
from models.spec import ModelSpec


@pytest.fixture
def batch():
    """x0, eps, x_t and (a, s) in float64 over the whole t range of the cosine schedule."""
    g = torch.Generator().manual_seed(0)
    abar = make_schedule(ModelSpec(schedule="squaredcos_cap_v2")).abar.double()
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    a, s = (
        abar[t].sqrt().view(-1, 1, 1, 1),
        (1 - abar[t]).sqrt().view(-1, 1, 1, 1),
    )  # a^2 + s^2 = 1 in float64
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    return x0, eps, a * x0 + s * eps, a, s


@pytest.mark.parametrize("prediction", p.PREDICTIONS)
def test_true_target_recovers_x0_and_eps(batch, prediction):
    x0, eps, x_t, a, s = batch
    output = p.target(prediction, x0, eps, a, s)
    x0_hat, eps_hat = p.to_x0_eps(prediction, output, x_t, a, s)
    # eps at t near T divides by a ~ 5e-5, so errors scale up to 1/a times float64 precision
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(p.x0_from_output(prediction, output, x_t, a, s), x0_hat, rtol=0, atol=0)


def test_conversions_round_trip(batch):
    x0, eps, x_t, a, s = batch
    v = p.v_from(x0, eps, a, s)
    torch.testing.assert_close(p.x0_from_v(x_t, v, a, s), x0)
    torch.testing.assert_close(p.eps_from_v(x_t, v, a, s), eps)
    torch.testing.assert_close(p.eps_from_x0(x_t, p.x0_from_eps(x_t, eps, a, s), a, s), eps)
    torch.testing.assert_close(p.x0_from_eps(x_t, p.eps_from_x0(x_t, x0, a, s), a, s), x0, atol=1e-9, rtol=0)


def test_min_snr_weights_are_one_x0_weight_in_three_units():
    snr = make_schedule(ModelSpec()).snr.double()
    w_x0 = p.min_snr_weight("sample", snr, 5.0)
    torch.testing.assert_close(w_x0, snr.clamp(max=5.0))
    torch.testing.assert_close(p.min_snr_weight("epsilon", snr, 5.0) * snr, w_x0)
    torch.testing.assert_close(p.min_snr_weight("v_prediction", snr, 5.0) * (snr + 1), w_x0)


def test_unknown_prediction_lists_the_allowed():
    with pytest.raises(ValueError, match="epsilon, sample, v_prediction"):
        p.check("x_start")
