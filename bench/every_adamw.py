"""Does `reg_schedule.every: N` (penalty on one step in N, times N) keep the penalty's effect?

    .venv/bin/python bench/every_adamw.py
    .venv/bin/python bench/every_adamw.py --lambdas 0.1 0.3 1 --every 2 4 10 --rounds 5

The xN scaling keeps the expected *loss* per step, but AdamW normalises each update by its
running gradient scale and clipping caps the rare large gradient, so the *effect* need not
follow. A toy problem with the trainer's optimizer settings (AdamW, default betas and weight
decay 0.01, gradient-norm clipping at 1) measures it:
    1-D parameter theta, R independent replicas (Adam is elementwise, so a (R,) tensor is R runs;
    in 1-D, norm clipping is clamping), diffusion gradient theta - xi with xi ~ N(0, 1) (a noisy
    quadratic pulling theta to 0), penalty lambda * theta (a constant push of lambda).
    drift(N)  = mean over replicas of theta_final(lambda, every N) - theta_final(lambda 0),
                with the same xi in both (common random numbers)
    ratio(N)  = drift(N) / drift(every 1): 1 means every=N keeps the effect.
The anchor (every=1) is re-measured in every round; rounds use different seeds and are
interleaved over (lambda, N); the table gives the median ratio and its min-max over rounds.
"""

from __future__ import annotations

import argparse
import statistics

import torch


def final_theta(lam: float, every: int, *, steps: int, replicas: int, lr: float, clip: float, seed: int) -> torch.Tensor:
    """theta `(R,)` after `steps` AdamW steps; the noise depends on the seed only."""
    noise = torch.Generator().manual_seed(seed)
    theta = torch.zeros(replicas, requires_grad=True)
    optimizer = torch.optim.AdamW([theta], lr=lr)
    for step in range(steps):
        xi = torch.randn(replicas, generator=noise)
        grad = theta.detach() - xi
        if step % every == 0:
            grad = grad + lam * every
        theta.grad = grad.clamp(-clip, clip)
        optimizer.step()
    return theta.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--every", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    kw = {"steps": args.steps, "replicas": args.replicas, "lr": args.lr, "clip": args.clip}

    ratios: dict[tuple[float, int], list[float]] = {}
    anchors: dict[float, list[float]] = {}
    for round_ in range(args.rounds):
        seed = 1000 + round_
        base = final_theta(0.0, 1, seed=seed, **kw)
        for lam in args.lambdas:
            anchor = (final_theta(lam, 1, seed=seed, **kw) - base).mean().item()
            anchors.setdefault(lam, []).append(anchor)
            for n in args.every:
                drift = (final_theta(lam, n, seed=seed, **kw) - base).mean().item()
                ratios.setdefault((lam, n), []).append(drift / anchor)

    print(f"every_adamw: {args.steps} steps, lr {args.lr}, clip {args.clip}, {args.replicas} replicas,"
          f" {args.rounds} rounds (median [min, max])")
    print("| lambda | drift every=1 | " + " | ".join(f"ratio every={n}" for n in args.every) + " |")
    print("|---|---|" + "---|" * len(args.every))
    for lam in args.lambdas:
        cells = []
        for n in args.every:
            r = ratios[(lam, n)]
            cells.append(f"{statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]")
        print(f"| {lam:g} | {statistics.median(anchors[lam]):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
