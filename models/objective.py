"""The training objective: diffusion loss plus the scheduled, weighted penalty on x0_hat.

Everything stays per sample `(B,)` until the final mean, so t-masks and weights combine
explicitly (notation as in models/schedule.py):

    total = mean_b[ diffusion_b + lam_eff(step) * w(t_b) * mask(t_b) * L'(x0_hat_b) ]

    diffusion_b  = min_snr_weight(t_b) * ||target_b - f(x_t, t)_b||^2 / (C H W)
    mask(t)      = t_min <= t < t_max. x0_hat's error is the eps error times 1/sqrt(SNR)
                   (0.34 at t=100, 157 at t=999 for linear betas): penalising it at high t
                   penalises noise, so the default t_max=200 keeps to the low-t regime.
    w(t)         = 1 | SNR(t) | min(SNR(t), gamma) | abar_t            (reg_schedule.weighting)
                   `snr` is unbounded near t=0 (SNR = 9,997 at t=0, 455 at t=10, 8.5 at t=100,
                   1.9 at t=199, linear betas): the few lowest-t samples of a batch dominate the
                   penalty, whose gradient there reaches the network only through x0_hat ~ x_t.
                   `min_snr` caps it at gamma; `alpha_bar` stays in (0, 1].
    lam_eff      = lambda * min(1, step / warmup_steps) * every * [step % every == 0]
                   Applying the penalty on one step in `every` and multiplying it by `every` keeps
                   its expected *loss* per step, not its effect: AdamW normalises updates by the
                   running gradient scale and clipping caps the rare large gradient, so on a toy
                   problem the penalty's drift is 0.89-0.43x that of every=1 at N=4 and 0.51-0.16x
                   at N=10 as the penalty grows against the diffusion gradient (bench/every_adamw.py;
                   near 1x only when the penalty is small). Compare runs at equal `every`.

The mean is over the whole batch, masked samples included (their penalty is 0): narrowing
[t_min, t_max) applies the penalty to fewer samples per batch, so sweeping t_max also changes the
penalty's effective strength (about proportionally to the fraction of t inside the mask).

The penalty is skipped entirely (no x0_hat, no regularizer call) when lam_eff is 0, so a
lambda=0 run costs exactly a vanilla run. All loss math is fp32 (the network wrapper casts
its output), so eps-prediction near t=T gives large but finite x0_hat, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from models import estimators, parameterization
from models.schedule import NoiseSchedule
from models.spec import RunSpec

Penalty = Callable[[Tensor], Tensor]  # x0_hat (B, C, H, W) -> (B,)


@dataclass
class LossParts:
    """0-dim tensors, left on the device: reading them is a host sync, done on log steps only."""

    total: Tensor  # what backward() sees
    diffusion: Tensor  # batch mean of the (min-SNR weighted) diffusion loss
    penalty_weighted: Tensor  # batch mean of lam_eff * w * mask * penalty: its share of `total`
    penalty_sum: Tensor  # sum of the raw penalty over the samples where it applied
    penalty_count: Tensor  # how many samples that was


class Objective:
    """Builds the loss of one training step from a RunSpec; holds no trainable state."""

    def __init__(self, spec: RunSpec, schedule: NoiseSchedule, penalty: Penalty | None):
        self.schedule = schedule
        self.prediction = spec.model.prediction
        self.min_snr_gamma = spec.model.min_snr_gamma
        self.estimator = spec.estimator
        self.reg = spec.reg_schedule
        self.lam = spec.lambda_
        self.penalty = penalty

    def lambda_at(self, step: int) -> float:
        """Lambda after the linear warm-up from 0 (what gets logged as `lambda`)."""
        if self.reg.warmup_steps == 0:
            return self.lam
        return self.lam * min(1.0, step / self.reg.warmup_steps)

    def lambda_eff(self, step: int) -> float:
        """The factor multiplying the penalty on this step, `every` scaling included."""
        if self.penalty is None or step % self.reg.every:
            return 0.0
        return self.lambda_at(step) * self.reg.every

    def mask(self, t: Tensor) -> Tensor:  # (B,) bool
        return (t >= self.reg.t_min) & (t < self.reg.t_max)

    def weight(self, t: Tensor) -> Tensor:
        """w(t) `(B,)`, before the mask."""
        kind = self.reg.weighting
        if kind == "none":
            return torch.ones_like(self.schedule.snr[t])
        if kind == "snr":
            return self.schedule.snr[t]
        if kind == "min_snr":
            return self.schedule.snr[t].clamp(max=self.reg.gamma)
        return self.schedule.abar[t]

    def diffusion_loss(self, output: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Per-sample MSE `(B,)` against the parameterization's target."""
        a, s = self.schedule.coeffs(t)
        target = parameterization.target(self.prediction, x0, noise, a, s)
        loss = (output - target).pow(2).flatten(1).mean(1)  # (B,)
        if self.min_snr_gamma is not None:
            loss = loss * parameterization.min_snr_weight(
                self.prediction, self.schedule.snr[t], self.min_snr_gamma
            )
        return loss

    def penalty_per_sample(
        self,
        net: estimators.NetworkCall,
        output: Tensor,
        x_t: Tensor,
        t: Tensor,
        mask: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """L'(x0_hat) `(B,)`, exactly 0 outside the mask.

        Tweedie is computed for the whole batch and masked (no extra network call, static
        shapes, no sync). DDIM costs K-1 network calls per sample, so it runs on the masked
        samples only; selecting them (`nonzero`) is one host sync per step, small next to
        those calls.
        """
        assert self.penalty is not None
        if self.estimator.kind == "tweedie":
            x0_hat = estimators.tweedie_x0(output, x_t, t, self.schedule, self.prediction)
            return torch.where(mask, self.penalty(x0_hat), 0.0)
        idx = mask.nonzero().squeeze(1)  # (M,)
        per_sample = output.new_zeros(t.shape)  # (B,)
        if idx.numel() == 0:
            return per_sample
        grad_steps = estimators.draw_grad_steps(
            self.estimator.grad_steps, self.estimator.random_cut, generator
        )
        x0_hat = estimators.ddim_x0(
            net,
            x_t[idx],
            t[idx],
            self.schedule,
            self.prediction,
            steps=self.estimator.steps,
            grad_steps=grad_steps,
            checkpointing=self.estimator.checkpointing,
            first_output=output[idx],
        )  # (M, C, H, W)
        return per_sample.index_copy(0, idx, self.penalty(x0_hat))

    def __call__(
        self,
        net: estimators.NetworkCall,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        *,
        step: int,
        generator: torch.Generator,
    ) -> LossParts:
        """Loss for a batch x0 `(B, C, H, W)` at times t `(B,)` with noise `(B, C, H, W)`.

        `generator` is a CPU generator for host-side draws (the DDIM random cut).
        """
        x_t = self.schedule.add_noise(x0, t, noise)
        output = net(x_t, t)  # (B, C, H, W) fp32
        diffusion = self.diffusion_loss(output, x0, noise, t)  # (B,)
        zero = diffusion.new_zeros(())
        lam_eff = self.lambda_eff(step)
        if lam_eff == 0.0:
            return LossParts(diffusion.mean(), diffusion.mean(), zero, zero, zero)
        mask = self.mask(t)  # (B,)
        penalty = self.penalty_per_sample(net, output, x_t, t, mask, generator)  # (B,)
        weighted = lam_eff * self.weight(t) * penalty  # (B,); penalty is 0 outside the mask
        return LossParts(
            total=(diffusion + weighted).mean(),
            diffusion=diffusion.mean(),
            penalty_weighted=weighted.mean(),
            penalty_sum=penalty.sum(),
            penalty_count=mask.sum().to(penalty.dtype),
        )
