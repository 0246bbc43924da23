"""Conventions checked against independent references: diffusers' schedulers and an oracle.

The oracle is the exact denoiser of a one-point dataset {x*}: E[x0 | x_t] = x*, so its eps
and v follow from the definitions x_t = a x* + s eps and v = a eps - s x* (Salimans & Ho),
written here with diffusers' alphas_cumprod, not with models/parameterization.py. Every
sampler and estimator fed by it must return x*; a wrong sign or coefficient does not.
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from models import estimators, parameterization
from models.samplers import SAMPLERS, make_scheduler, sample
from models.schedule import make_schedule
from models.spec import ModelSpec

T = 1000
ABAR = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear").alphas_cumprod  # (T,) float32
POINT = torch.linspace(-0.8, 0.8, 64).reshape(1, 8, 8)  # x*, (C, H, W) inside the clipping range


def oracle_output(prediction: str, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact model output for the one-point dataset {POINT} at (x_t, t)."""
    abar = ABAR[t].view(-1, 1, 1, 1).double()
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x0 = POINT.double().expand_as(x_t)
    eps = (x_t.double() - a * x0) / s
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction].float()


class Oracle(torch.nn.Module):
    """Called like a diffusers UNet2DModel: `net(x_t, t).sample`."""

    def __init__(self, prediction: str):
        super().__init__()
        self.prediction = prediction

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=oracle_output(self.prediction, x_t, t.expand(x_t.shape[0])))


@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_denoiser_through_every_sampler_returns_the_point(sampler, prediction):
    scheduler = make_scheduler(ModelSpec(prediction=prediction), sampler)
    images = sample(
        Oracle(prediction), scheduler, n=2, shape=tuple(POINT.shape), steps=5, eta=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(images, POINT.expand_as(images), atol=1e-3, rtol=0)


@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
@pytest.mark.parametrize("steps", [1, 3])
def test_oracle_denoiser_through_the_estimators_returns_the_point(prediction, steps):
    schedule = make_schedule(ModelSpec(prediction=prediction))
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 50, 199, 500, 900])
    x_t = schedule.add_noise(POINT.expand(5, -1, -1, -1), t, torch.randn(5, *POINT.shape, generator=g))

    def call_net(x, t_k):
        return oracle_output(prediction, x, t_k)

    x0_hat = estimators.ddim_x0(call_net, x_t, t, schedule, prediction, steps=steps, grad_steps=1)
    torch.testing.assert_close(x0_hat, POINT.expand_as(x0_hat), atol=2e-4, rtol=0)
    tweedie = estimators.tweedie_x0(call_net(x_t, t), x_t, t, schedule, prediction)
    torch.testing.assert_close(tweedie, POINT.expand_as(tweedie), atol=2e-4, rtol=0)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_add_noise_and_v_match_diffusers(beta_schedule):
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule)
    schedule = make_schedule(ModelSpec(schedule=beta_schedule))
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 4, 4, generator=g)
    x_t = schedule.add_noise(x0, t, noise)
    torch.testing.assert_close(x_t, reference.add_noise(x0, noise, t), atol=1e-6, rtol=0)
    a, s = schedule.coeffs(t)
    v = reference.get_velocity(x0, noise, t)
    torch.testing.assert_close(parameterization.target("v_prediction", x0, noise, a, s), v, atol=1e-6, rtol=0)
    x0_hat, eps_hat = parameterization.to_x0_eps("v_prediction", v, x_t, a, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
def test_ddim_estimator_matches_diffusers_ddim_steps(prediction):
    """K=2 from t=500: one DDIM step 500 -> 250, then x0 from the call at 250, both by diffusers."""

    def call_net(x, t):  # any smooth function of (x_t, t) will do
        return torch.tanh(0.5 * x + 0.3) * (1 + t.view(-1, 1, 1, 1) / T)

    reference = DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", prediction_type=prediction,
        clip_sample=False, set_alpha_to_one=False,
    )
    reference.set_timesteps(4)  # a step from t goes to t - T // 4
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(3, 1, 8, 8, generator=g)
    t = torch.full((3,), 500)
    x_250 = reference.step(call_net(x_t, t), 500, x_t, eta=0.0).prev_sample
    expected = reference.step(call_net(x_250, t // 2), 250, x_250, eta=0.0).pred_original_sample
    schedule = make_schedule(ModelSpec(prediction=prediction))
    got = estimators.ddim_x0(call_net, x_t, t, schedule, prediction, steps=2, grad_steps=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
