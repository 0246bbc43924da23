"""What the network predicts (eps, x0 or v), side by side, with one-line conversions.

Every model output is turned into one `(x0, eps)` pair, so the loss, the estimators and the
samplers never branch on the parameterization themselves. Mixing them up silently gives
pure noise, hence one checked entry point (`to_x0_eps`) instead of scattered if/else.

Notation (a = sqrt(abar_t), s = sqrt(1 - abar_t), both `(B, 1, 1, 1)`; a^2 + s^2 = 1):
    x_t = a x0 + s eps
    v   = a eps - s x0                    (Salimans & Ho 2022)
    x0  = (x_t - s eps) / a = a x_t - s v
    eps = (x_t - a x0) / s  = s x_t + a v
"""

from __future__ import annotations

from typing import get_args

from torch import Tensor

from models.spec import Prediction

PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def x0_from_eps(x_t: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return (x_t - s * eps) / a


def eps_from_x0(x_t: Tensor, x0: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return (x_t - a * x0) / s


def x0_from_v(x_t: Tensor, v: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return a * x_t - s * v


def eps_from_v(x_t: Tensor, v: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return s * x_t + a * v


def v_from(x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return a * eps - s * x0


def check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")


def target(prediction: str, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """What the network is trained to output for the pair (x0, eps)."""
    check(prediction)
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    return v_from(x0, eps, a, s)


def to_x0_eps(prediction: str, output: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Model output -> (x0_hat, eps_hat), each `(B, C, H, W)`."""
    check(prediction)
    if prediction == "epsilon":
        return x0_from_eps(x_t, output, a, s), output
    if prediction == "sample":
        return output, eps_from_x0(x_t, output, a, s)
    return x0_from_v(x_t, output, a, s), eps_from_v(x_t, output, a, s)


def x0_from_output(prediction: str, output: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """The one-step posterior mean E[x0 | x_t] implied by the model output."""
    return to_x0_eps(prediction, output, x_t, a, s)[0]


def min_snr_weight(prediction: str, snr: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight `(B,)` (Hang et al. 2023, lucidrains' convention).

    The x0-space weight min(SNR, gamma) is re-expressed for each target: an eps error is an
    x0 error times sqrt(SNR), a v error is one times sqrt(SNR + 1).
    """
    check(prediction)
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "sample":
        return clipped
    return clipped / (snr + 1)
