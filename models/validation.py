"""A fixed held-out split and a deterministic diffusion loss on it (`val_loss`).

The split and the (t, noise) pairs come from a fixed seed, not the run's: every run on a
dataset holds out the same images and scores them at the same noise, so val_loss compares
across runs, seeds and lambdas (kohya's trainers fix noise and t the same way). The t values
are spread evenly over [0, T), so the loss weighs every noise level equally, every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.estimators import NetworkCall
from models.objective import Objective

FRACTION = 0.05  # of the dataset held out when validation is on
SPLIT_SEED = 0  # fixed: the same images and noise for every run on a dataset


@dataclass(frozen=True)
class HeldOut:
    x0: Tensor  # (M, C, H, W)
    t: Tensor  # (M,) long, evenly spread over [0, T)
    noise: Tensor  # (M, C, H, W)


def split(images: Tensor, timesteps: int) -> tuple[Tensor, HeldOut | None]:
    """(training images, held-out set): 5% held out (at least 1, none from a single image)."""
    n = images.shape[0]
    n_val = max(1, int(n * FRACTION)) if n >= 2 else 0
    if n_val == 0:
        return images, None
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(n, generator=gen).to(images.device)
    x0 = images[order[:n_val]]
    t = (torch.arange(n_val, dtype=torch.float64) + 0.5).mul(timesteps / n_val).long().to(images.device)
    noise = torch.randn(x0.shape, generator=gen).to(images.device)
    return images[order[n_val:]], HeldOut(x0, t, noise)


@torch.no_grad()
def loss(call_net: NetworkCall, objective: Objective, held_out: HeldOut, batch_size: int) -> Tensor:
    """Mean diffusion loss (the training objective's, min-SNR weighting included) over the held-out
    set, as a 0-dim device tensor (reading it is the caller's host sync)."""
    total = held_out.x0.new_zeros(())
    for start in range(0, held_out.x0.shape[0], batch_size):
        x0, t, noise = (v[start : start + batch_size] for v in (held_out.x0, held_out.t, held_out.noise))
        x_t = objective.schedule.add_noise(x0, t, noise)
        total += objective.diffusion_loss(call_net(x_t, t), x0, noise, t).sum()
    return total / held_out.x0.shape[0]
