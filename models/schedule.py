"""The noise schedule: diffusers' alphas_cumprod, turned once into per-t buffers.

Taking `alphas_cumprod` from diffusers' `DDPMScheduler` (rather than re-deriving the betas)
guarantees that training and the diffusers samplers/pipelines used afterwards agree on
every coefficient, down to the last bit.

Notation (t in 0..T-1, per sample):
    abar_t          alphas_cumprod[t]
    a_t = sqrt(abar_t),  s_t = sqrt(1 - abar_t)
    x_t = a_t x0 + s_t eps                     forward process
    SNR(t) = abar_t / (1 - abar_t) = a_t^2 / s_t^2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from models.spec import ModelSpec


def scheduler_config(model: ModelSpec) -> dict:
    """The diffusers scheduler arguments shared by training, sampling and export."""
    return {
        "num_train_timesteps": model.timesteps,
        "beta_schedule": model.schedule,
        "prediction_type": model.prediction,
    }


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-t buffers `(T,)` in float32 on one device; index them with integer t `(B,)`."""

    abar: Tensor  # (T,)
    a: Tensor  # (T,) sqrt(abar)
    s: Tensor  # (T,) sqrt(1 - abar)
    snr: Tensor  # (T,)

    @property
    def timesteps(self) -> int:
        return self.abar.shape[0]

    def coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) shaped `(B, 1, 1, 1)` to broadcast against images."""
        return self.a[t].view(-1, 1, 1, 1), self.s[t].view(-1, 1, 1, 1)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = a_t x0 + s_t eps."""
        a, s = self.coeffs(t)
        return a * x0 + s * noise


def make_schedule(model: ModelSpec, device: torch.device | str = "cpu") -> NoiseSchedule:
    """Buffers from diffusers' alphas_cumprod, computed in float64 then stored as float32."""
    abar = DDPMScheduler(**scheduler_config(model)).alphas_cumprod.to(torch.float64)  # (T,)
    return NoiseSchedule(
        abar=abar.float().to(device),
        a=abar.sqrt().float().to(device),
        s=(1 - abar).sqrt().float().to(device),
        snr=(abar / (1 - abar)).float().to(device),
    )
