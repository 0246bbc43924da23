"""Estimators of x0_hat, the image the penalty L'(x0_hat) sees during training.

`tweedie_x0` is the one-step posterior mean E[x0 | x_t]: free, since it reuses the output of
the diffusion-loss forward pass, but blurry at high t. `ddim_x0` runs K deterministic DDIM
steps (eta = 0) from x_t down to t = 0 with gradients, so the penalty sees something closer
to a sample; backprop is truncated to the last calls (DRaFT-K, Clark et al. 2024), which
keeps memory at `grad_steps` network activations and is reported to work best anyway.

Neither estimator clips x0_hat to [-1, 1]: a clamp has zero gradient outside the range, so
exactly the pixels the penalty should push back (too bright, too dark) would get no signal
(CoPaint#6). Clipping belongs to sampling only (`models/samplers.py`).

Leverage (what the network's weights feel): only the last `grad_steps` calls get gradient,
and call k sees time t_k. With eps prediction d x0_k / d eps_k = -s/a at t_k, so with the
default K=4, grad_steps=1 only the call at t_{K-1} = floor(t/4) < t_max/4 = 50 learns from
the penalty, where |d x0_hat / d eps_hat| <= 0.17 (linear betas): averaged over t < 200 that
is ~3.7x less leverage than Tweedie (whose call at t itself gets the gradient). grad_steps = K
restores the gradient at every t_k (memory: K activations, or `checkpointing`). The earlier
calls still shape *which* x0_hat is penalised, they just get no gradient of their own.

Notation: t_0 = t > t_1 > ... > t_{K-1} >= 0, per sample, t_k = floor(t (K - k) / K).
    call k:  (x0_k, eps_k) = to_x0_eps(f(x_{t_k}, t_k))
    step:    x_{t_{k+1}} = a_{t_{k+1}} x0_k + s_{t_{k+1}} eps_k          (DDIM, eta = 0)
    result:  x0_hat = x0_{K-1}                                           (K = 1: Tweedie)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from models import parameterization
from models.schedule import NoiseSchedule

NetworkCall = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, H, W), t (B,) long) -> output (B, C, H, W) fp32


def tweedie_x0(output: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: str) -> Tensor:
    """One-step x0_hat `(B, C, H, W)` from an already computed model output."""
    a, s = schedule.coeffs(t)
    return parameterization.x0_from_output(prediction, output, x_t, a, s)


def ddim_timesteps(t: Tensor, steps: int) -> list[Tensor]:
    """The K per-sample times t_k = floor(t (K - k) / K), each `(B,)`; t_0 = t.

    Small t can repeat a time (t=2, K=4: 2, 1, 1, 0); a DDIM step to the same t just
    re-noises the current x0_k estimate deterministically, so that stays correct.
    """
    return [torch.div(t * (steps - k), steps, rounding_mode="floor") for k in range(steps)]


def ddim_x0(
    net: NetworkCall,
    x_t: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    *,
    steps: int,
    grad_steps: int,
    checkpointing: bool = False,
    first_output: Tensor | None = None,
    cut: Tensor | None = None,
) -> Tensor:
    """K DDIM steps from x_t to 0; gradients flow through the last `grad_steps` calls only.

    The first `steps - grad_steps` calls run under `torch.no_grad` (DRaFT-K truncation: the
    graph starts at the detached x_{t_{K-k}}). `first_output` reuses the model output at
    (x_t, t) from the diffusion-loss pass, saving one call; it is detached when that call
    lies before the cut. With `checkpointing`, each differentiable call is recomputed in the
    backward pass instead of storing its activations (memory for compute).

    `cut` (a 0-dim long tensor in [1, grad_steps], from `draw_cut`) narrows the truncation on
    the device: only the last `cut` calls pass gradient; the outputs of the differentiable calls
    before it are replaced by their detached values (`torch.where` on the device, so one graph
    serves every cut and no value is read on the host). Their backward still runs, through zeros.
    """
    assert 1 <= grad_steps <= steps, f"need 1 <= grad_steps ({grad_steps}) <= steps ({steps})"
    times = ddim_timesteps(t, steps)
    first_grad_call = steps - grad_steps
    x = x_t  # (B, C, H, W)
    for k, t_k in enumerate(times):
        differentiable = k >= first_grad_call
        if k == 0 and first_output is not None:
            output = first_output if differentiable else first_output.detach()
        else:
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                if differentiable and checkpointing:
                    # no RNG state to stash: the UNet has no dropout, and reading the CUDA RNG
                    # state is not allowed while a CUDA graph is being captured
                    output = checkpoint(net, x, t_k, use_reentrant=False, preserve_rng_state=False)
                else:
                    output = net(x, t_k)
        if cut is not None and differentiable and k < steps - 1:  # the last call is always inside the cut
            output = torch.where(k >= steps - cut, output, output.detach())
        x0_k, eps_k = parameterization.to_x0_eps(prediction, output, x, *schedule.coeffs(t_k))
        if k + 1 < steps:
            a_next, s_next = schedule.coeffs(times[k + 1])
            x = a_next * x0_k + s_next * eps_k
    return x0_k


def draw_cut(grad_steps: int, random_cut: bool, generator: torch.Generator) -> Tensor | None:
    """How many last calls pass gradient this training step, as a 0-dim long tensor on the
    generator's device, or None (all `grad_steps` of them).

    With `random_cut` (AlignProp-style), k ~ Uniform{1, ..., grad_steps}, drawn once per training
    step for the whole batch from the trainer's device generator: runs and resumes stay
    reproducible, and nothing is read on the host (the step can be one CUDA graph).
    """
    if not random_cut or grad_steps == 1:
        return None
    return torch.randint(1, grad_steps + 1, (), generator=generator, device=generator.device)
