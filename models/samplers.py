"""Sampling from a checkpoint's EMA weights with diffusers' schedulers.

The schedulers get the run's own schedule and prediction type (`scheduler_config`), so
sampling solves the ODE/SDE the network was trained for. Clipping x0 to [-1, 1] happens
here and only here (never in the training loss, see models/estimators.py). Every sampler's
first timestep is the last training timestep T-1 (pure noise), whatever the step count.

Regularizer guidance (`GuidanceSpec`), the training-free baseline for "penalty during
training": before each scheduler step with t < t_max,
    x0_hat = to_x0_eps(f(x_t, t))[0]                (the model's own parameterization)
    x_t   <- x_t - scale * grad_{x_t} L'(x0_hat)    (universal / reconstruction guidance)
and the step then uses the same model output with the moved x_t. One network call per step
as without guidance, plus its backward pass; scale 0 gives the unguided samples exactly.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from models import checkpoint, parameterization, regularizers
from models.datasets import to_uint8
from models.devices import resolve_device
from models.schedule import scheduler_config
from models.spec import FieldError, GuidanceSpec, ModelSpec, SamplerName

SAMPLERS: tuple[str, ...] = get_args(SamplerName)
MAX_BATCH = 256  # images per network call; bounds memory for large n


def make_scheduler(model: ModelSpec, sampler: str) -> SchedulerMixin:
    """A diffusers scheduler for `sampler`, configured like training, clipping for sampling."""
    config = scheduler_config(model)
    # "trailing" starts at t = T-1, so few-step sampling starts from pure noise ("leading",
    # diffusers' default for DDPM/DDIM, starts 5-step sampling at t = 800).
    if sampler == "ddpm":
        return DDPMScheduler(**config, clip_sample=True, timestep_spacing="trailing")
    if sampler == "ddim":
        return DDIMScheduler(**config, clip_sample=True, timestep_spacing="trailing")
    if sampler == "dpm_solver":
        # Thresholding with sample_max_value 1 clips each x0 prediction to [-1, 1].
        return DPMSolverMultistepScheduler(
            **config, algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0
        )
    raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")


def check_guidance(guidance: GuidanceSpec, model: ModelSpec) -> None:
    """FieldError naming `guidance.t_max` when it lies beyond the model's timesteps."""
    if guidance.t_max > model.timesteps:
        raise FieldError(
            "guidance.t_max", f"guidance.t_max ({guidance.t_max}) must be <= model.timesteps ({model.timesteps})"
        )


def guided_x(
    net: torch.nn.Module,
    scheduler: SchedulerMixin,
    penalty: regularizers.WeightedSum,
    scale: float,
    x: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t moved against grad L'(x0_hat), the model output at the unmoved x_t), `(B, C, H, W)` each."""
    abar = scheduler.alphas_cumprod[t].to(x.device, torch.float32)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        output = net(scheduler.scale_model_input(x_in, t), t.expand(x.shape[0])).sample.float()
        x0_hat = parameterization.to_x0_eps(scheduler.config.prediction_type, output, x_in, a, s)[0]
        (grad,) = torch.autograd.grad(penalty(x0_hat).sum(), x_in)  # per-image gradients
    return x - scale * grad, output.detach()


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
    guidance: GuidanceSpec | None = None,
) -> torch.Tensor:
    """n images `(n, C, H, W)` in [-1, 1]; all randomness comes from `generator`."""
    device = generator.device
    step_kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    penalty = regularizers.build(guidance.regularizer) if guidance is not None else None
    out = []
    for start in range(0, n, max_batch):
        b = min(max_batch, n - start)
        scheduler.set_timesteps(steps, device=device)  # also resets multistep solvers' history
        x = torch.randn((b, *shape), generator=generator, device=device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            if guidance is not None and t < guidance.t_max:
                x, output = guided_x(net, scheduler, penalty, guidance.scale, x, t)
            else:
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
    guidance: GuidanceSpec | None = None,
) -> np.ndarray:
    """uint8 images `(n, H, W, C)` from a checkpoint's EMA weights; same seed, same images."""
    device = resolve_device(device)
    train_state = checkpoint.from_bytes(state)
    if guidance is not None:
        check_guidance(guidance, train_state.model_spec)
    net = checkpoint.build_network(train_state, weights="ema", device=device)
    scheduler = make_scheduler(train_state.model_spec, sampler)
    generator = torch.Generator(device).manual_seed(seed)
    shape = (train_state.channels, train_state.image_size, train_state.image_size)
    images = sample(net, scheduler, n=n, shape=shape, steps=steps, eta=eta, generator=generator, guidance=guidance)
    return to_uint8(images)
