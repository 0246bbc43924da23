import pytest
import torch
from diffusers import DDPMScheduler

from models.schedule import make_schedule
from models.spec import ModelSpec


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_buffers_match_diffusers(name):
    spec = ModelSpec(schedule=name, timesteps=100)
    sched = make_schedule(spec)
    abar = DDPMScheduler(num_train_timesteps=100, beta_schedule=name).alphas_cumprod
    assert sched.timesteps == 100
    assert torch.equal(sched.abar, abar.float())
    torch.testing.assert_close(sched.a**2 + sched.s**2, torch.ones(100))
    torch.testing.assert_close(sched.snr, sched.abar / (1 - sched.abar))
    assert torch.all(sched.abar[1:] < sched.abar[:-1]), "abar decreases with t"


def test_add_noise_is_the_forward_process():
    sched = make_schedule(ModelSpec())
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    a, s = sched.coeffs(t)
    assert a.shape == (4, 1, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, t, noise), a * x0 + s * noise)
