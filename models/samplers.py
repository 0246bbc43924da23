"""Sampling from a checkpoint's EMA weights with diffusers' schedulers.

The schedulers get the run's own schedule and prediction type (`scheduler_config`), so
sampling solves the ODE/SDE the network was trained for. Clipping x0 to [-1, 1] happens
here and only here (never in the training loss, see models/estimators.py).
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from models import checkpoint
from models.datasets import to_uint8
from models.schedule import scheduler_config
from models.spec import ModelSpec, SamplerName
from models.devices import resolve_device

SAMPLERS: tuple[str, ...] = get_args(SamplerName)
MAX_BATCH = 256  # images per network call; bounds memory for large n


def make_scheduler(model: ModelSpec, sampler: str) -> SchedulerMixin:
    """A diffusers scheduler for `sampler`, configured like training, clipping for sampling."""
    config = scheduler_config(model)
    if sampler == "ddpm":
        return DDPMScheduler(**config, clip_sample=True)
    if sampler == "ddim":
        # "trailing" starts at t = T-1, so few-step sampling starts from (nearly) pure noise.
        return DDIMScheduler(**config, clip_sample=True, timestep_spacing="trailing")
    if sampler == "dpm_solver":
        # Thresholding with sample_max_value 1 clips each x0 prediction to [-1, 1].
        return DPMSolverMultistepScheduler(
            **config, algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0
        )
    raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")


@torch.no_grad()
def sample(
    net: torch.nn.Module,
    scheduler: SchedulerMixin,
    *,
    n: int,
    shape: tuple[int, int, int],
    steps: int,
    eta: float,
    generator: torch.Generator,
    max_batch: int = MAX_BATCH,
) -> torch.Tensor:
    """n images `(n, C, H, W)` in [-1, 1]; all randomness comes from `generator`."""
    device = generator.device
    step_kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    out = []
    for start in range(0, n, max_batch):
        b = min(max_batch, n - start)
        scheduler.set_timesteps(steps, device=device)  # also resets multistep solvers' history
        x = torch.randn((b, *shape), generator=generator, device=device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            output = net(scheduler.scale_model_input(x, t), t.expand(b)).sample.float()
            x = scheduler.step(output, t, x, generator=generator, **step_kwargs).prev_sample
        out.append(x)
    return torch.cat(out).clamp(-1, 1)


def sample_from_state(
    state: bytes,
    *,
    n: int,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """uint8 images `(n, H, W, C)` from a checkpoint's EMA weights; same seed, same images."""
    device = resolve_device(device)
    train_state = checkpoint.from_bytes(state)
    net = checkpoint.build_network(train_state, weights="ema", device=device)
    scheduler = make_scheduler(train_state.model_spec, sampler)
    generator = torch.Generator(device).manual_seed(seed)
    shape = (train_state.channels, train_state.image_size, train_state.image_size)
    return to_uint8(sample(net, scheduler, n=n, shape=shape, steps=steps, eta=eta, generator=generator))
