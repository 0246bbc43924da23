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

Static shapes, for a step captured as one CUDA graph (models/step.py): the DDIM penalty runs on
a fixed-size sub-batch, the batch's first M = round(B f) samples, f = (t_max - t_min) / T, whose
t is drawn in [t_min, t_max) directly; the other B - M draw t from the rest of [0, T) (`draw_t`).
That is stratified sampling of the same uniform t: the diffusion loss weighs the two strata by f
and 1 - f, and the penalty term is f * mean_m[lam_eff w(t_m) L'(x0_hat_m)], the same expectation
as the masked batch mean above (Tweedie keeps the mask: it costs nothing per masked sample).
With B = 1 the single sample is always in [t_min, t_max) (no second stratum to weigh).

The penalty is skipped entirely (no x0_hat, no regularizer call) when lambda is 0 and on the
steps that `every` skips (the caller passes lam_eff=None: a fixed second graph, chosen by the
step number). Otherwise lam_eff is a 0-dim device tensor that multiplies the penalty, so the
warm-up from lam_eff = 0 never changes the graph. All loss math is fp32 (the network wrapper
casts its output), so eps-prediction near t=T gives large but finite x0_hat, never NaN.
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
        self.penalty = penalty if spec.lambda_ > 0 else None
        self.fraction = (self.reg.t_max - self.reg.t_min) / schedule.timesteps  # f: share of t penalised
        self.stratified = self.penalty is not None and self.estimator.kind == "ddim"

    def applies(self, step: int) -> bool:
        """Whether step `step` computes the penalty at all (lambda > 0, one step in `every`)."""
        return self.penalty is not None and step % self.reg.every == 0

    def penalty_batch(self, batch: int) -> int:
        """M, the DDIM penalty sub-batch: round(B f), at least 1, and below B unless f = 1."""
        if self.fraction == 1.0 or batch == 1:
            return batch
        return min(max(round(batch * self.fraction), 1), batch - 1)

    def draw_t(self, batch: int, generator: torch.Generator) -> Tensor:
        """t `(B,)` on the generator's device: uniform on [0, T), or for the DDIM penalty stratified,
        the first M in [t_min, t_max) and the rest in [0, t_min) + [t_max, T)."""
        device, T = generator.device, self.schedule.timesteps
        if not self.stratified:
            return torch.randint(T, (batch,), generator=generator, device=device)
        m, lo, width = self.penalty_batch(batch), self.reg.t_min, self.reg.t_max - self.reg.t_min
        inside = torch.randint(lo, lo + width, (m,), generator=generator, device=device)
        if m == batch:
            return inside
        rest = torch.randint(T - width, (batch - m,), generator=generator, device=device)
        return torch.cat([inside, rest + width * (rest >= lo)])

    def lambda_at(self, step: int) -> float:
        """Lambda after the linear warm-up from 0 (what gets logged as `lambda`)."""
        if self.reg.warmup_steps == 0:
            return self.lam
        return self.lam * min(1.0, step / self.reg.warmup_steps)

    def lambda_eff(self, step: int) -> float:
        """The factor multiplying the penalty on this step, `every` scaling included."""
        if not self.applies(step):
            return 0.0
        return self.lambda_at(step) * self.reg.every

    def diffusion_mean(self, diffusion: Tensor) -> Tensor:
        """The batch's estimate of E_t[diffusion] from per-sample losses `(B,)`: the plain mean, or
        for stratified t the strata means weighed by their share of [0, T)."""
        batch = diffusion.shape[0]
        m = self.penalty_batch(batch)
        if not self.stratified or m == batch:
            return diffusion.mean()
        return self.fraction * diffusion[:m].mean() + (1 - self.fraction) * diffusion[m:].mean()

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

    def tweedie_penalty(self, output: Tensor, x_t: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        """L'(x0_hat) `(B,)` for the whole batch from the diffusion pass's output, exactly 0 outside
        the mask (no extra network call, static shapes, no sync)."""
        assert self.penalty is not None
        x0_hat = estimators.tweedie_x0(output, x_t, t, self.schedule, self.prediction)
        return torch.where(mask, self.penalty(x0_hat), 0.0)

    def ddim_penalty(
        self, net: estimators.NetworkCall, output: Tensor, x_t: Tensor, t: Tensor, cut: Tensor | None
    ) -> Tensor:
        """L'(x0_hat) `(M,)` on the penalty sub-batch, the first M samples (their t is in
        [t_min, t_max) by `draw_t`); K-1 network calls each, the first reused from `output`."""
        assert self.penalty is not None
        m = self.penalty_batch(t.shape[0])
        x0_hat = estimators.ddim_x0(
            net,
            x_t[:m],
            t[:m],
            self.schedule,
            self.prediction,
            steps=self.estimator.steps,
            grad_steps=self.estimator.grad_steps,
            checkpointing=self.estimator.checkpointing,
            first_output=output[:m],
            cut=cut,
        )  # (M, C, H, W)
        return self.penalty(x0_hat)

    def __call__(
        self,
        net: estimators.NetworkCall,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        *,
        lam_eff: Tensor | float | None,
        cut: Tensor | None = None,
    ) -> LossParts:
        """Loss for a batch x0 `(B, C, H, W)` at times t `(B,)` (from `draw_t`) with noise `(B, C, H, W)`.

        `lam_eff`: the penalty's factor this step (`lambda_eff`; a 0-dim device tensor in the
        trainer), None on the steps without a penalty. `cut`: the DDIM random cut (`draw_cut`).
        """
        x_t = self.schedule.add_noise(x0, t, noise)
        return self.loss(net, x0, t, noise, x_t, net(x_t, t), lam_eff=lam_eff, cut=cut)

    def loss(
        self,
        net: estimators.NetworkCall,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        x_t: Tensor,
        output: Tensor,
        *,
        lam_eff: Tensor | float | None,
        cut: Tensor | None = None,
    ) -> LossParts:
        """The loss from the network's `output` (B, C, H, W) fp32 at `x_t`, already computed: a sweep
        trained as one stacked model (models/stacked.py) runs every point's forward pass at once,
        then each point's own objective here. `net` serves the DDIM estimator's further calls."""
        diffusion = self.diffusion_mean(self.diffusion_loss(output, x0, noise, t))  # ()
        if lam_eff is None or self.penalty is None:
            zero = diffusion.new_zeros(())
            return LossParts(diffusion, diffusion, zero, zero, zero)
        if self.stratified:
            penalty = self.ddim_penalty(net, output, x_t, t, cut)  # (M,)
            t_pen = t[: penalty.shape[0]]
            count = penalty.new_full((), penalty.shape[0])  # a fill, not a host-to-device copy
            weighted = self.fraction * (lam_eff * self.weight(t_pen) * penalty).mean()
        else:
            mask = self.mask(t)  # (B,)
            penalty = self.tweedie_penalty(output, x_t, t, mask)  # (B,); 0 outside the mask
            count = mask.sum().to(penalty.dtype)
            weighted = (lam_eff * self.weight(t) * penalty).mean()
        return LossParts(
            total=diffusion + weighted,
            diffusion=diffusion,
            penalty_weighted=weighted,
            penalty_sum=penalty.sum(),
            penalty_count=count,
        )
