"""Time to quality on the CPU: what a user waits for is a good model, not steps per second.

    .venv/bin/python bench/time_to_quality.py --budget 120 --samples 1000      # digits, unet-xs

The anchor (the diffusers-example loop of bench/train_throughput.py: fp32, no EMA, batch 64) and
regdiff with its defaults (models.trainer.train on a default RunSpec: EMA 0.999 with warm-up,
Tweedie TV at lambda 0.1, t < 200) each train for a budget of seconds, then DDIM-50 samples from
what each would ship (the anchor's weights, regdiff's EMA) are scored by models/evaluation.py: FCD
with its 95% bootstrap interval and noise floor. regdiff also runs on half the budget: the issue's
target is that regdiff reaches the anchor's final FCD in at most half its time.

Clock: this process's CPU time with one torch thread (as train_throughput.py on the CPU: the 2-core
box is shared, and wall time there measures the neighbours). regdiff stops at the first step past
the budget (its should_stop hook is read every step); the anchor checks after every step.

Screening candidate defaults without editing models/: `--regdiff-train '{"lr": 1e-3}'` is merged into
the RunSpec's "train", `--ema-inv-gamma` / `--ema-power` set models.trainer's EMA warm-up constants
(decay(k) = min(ema_decay, 1 - (1 + k/inv_gamma)^-power)) for this process, `--adam-betas` swaps
AdamW's betas in regdiff's trainer only, and `--also-ema 2:50 3:150` scores more EMA warm-ups
(power:inv_gamma) of the same regdiff training. A screen rarely needs every row, and training is most
of a row's cost (digits are 8x8: scoring N = 1000 samples takes ~25 s on one thread): `--only anchor`
/ `--only regdiff-half` pick rows, `--regdiff-budgets` replaces the budgets of the regdiff rows, and
`--weights` picks the EMA and/or raw rows.

    .venv/bin/python bench/time_to_quality.py --only regdiff-half --samples 500 \\
        --regdiff-train '{"lr": 2e-3}' --ema-power 3 --ema-inv-gamma 150
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.train_throughput import anchor_steps
from models import checkpoint, evaluation, samplers, trainer
from models.datasets import ImageSet, load_builtin, to_uint8
from models.spec import RunSpec
from models.trainer import TrainHooks, train


def train_anchor(data: ImageSet, budget: float, seed: int) -> tuple[dict[str, torch.nn.Module], int]:
    """{"": the trained weights}, steps."""
    started = time.process_time()
    for step, (net, _) in enumerate(anchor_steps(data, preset="unet-xs", batch=64, device=torch.device("cpu"),
                                                 seed=seed), start=1):
        if time.process_time() - started >= budget:
            return {"": net.eval().requires_grad_(False)}, step
    raise AssertionError("unreachable")


@contextlib.contextmanager
def adam_betas(betas: tuple[float, float] | None) -> Iterator[None]:
    """regdiff's trainer builds torch.optim.AdamW with torch's betas (0.9, 0.999); the anchor, as the
    diffusers example, uses (0.95, 0.999). TrainSpec has no field for them, so a screen swaps the class
    the trainer sees (models.trainer's `torch` is the global module: patched only while it trains)."""
    if betas is None:
        yield
        return
    original = torch.optim.AdamW
    torch.optim.AdamW = functools.partial(original, betas=betas)  # type: ignore[misc]
    try:
        yield
    finally:
        torch.optim.AdamW = original  # type: ignore[misc]


def ema_decay(ema_step: int, target: float, power: float, inv_gamma: float) -> float:
    """models.trainer.ema_decay with other warm-up constants."""
    return min(target, 1 - (1 + ema_step / inv_gamma) ** -power)


@contextlib.contextmanager
def shadow_emas(warmups: list[tuple[float, float]], target: float) -> Iterator[list[list[torch.Tensor]]]:
    """More EMAs of the same training, one per (power, inv_gamma) warm-up, updated after every step
    exactly as the trainer updates its own: one training scores several warm-ups (training costs 2-5x
    a model's scoring). Wraps models.trainer.make_step; their lerps are inside the CPU budget (small
    next to a step's forward and backward: the step counts did not move). `1:1` reproduces the
    trainer's own EMA exactly (checked: the same FCD)."""
    shadows: list[list[torch.Tensor]] = []
    if not warmups:
        yield shadows
        return
    original = trainer.make_step

    def make_step(**kwargs: Any) -> Callable[[bool], None]:  # the trainer calls it with keywords only
        params = kwargs["params"]
        shadows.extend([p.detach().clone() for p in params] for _ in warmups)
        run_step = original(**kwargs)
        done = 0

        def step(with_penalty: bool) -> None:
            nonlocal done
            run_step(with_penalty)
            with torch.no_grad():
                for shadow, (power, inv_gamma) in zip(shadows, warmups, strict=True):
                    torch._foreach_lerp_(shadow, params, 1 - ema_decay(done, target, power, inv_gamma))
            done += 1

        return step

    trainer.make_step = make_step
    try:
        yield shadows
    finally:
        trainer.make_step = original


def train_regdiff(data: ImageSet, budget: float, seed: int, *, train_overrides: dict | None = None,
                  betas: tuple[float, float] | None = None,
                  also_ema: list[tuple[float, float]] | None = None,
                  ) -> tuple[dict[str, torch.nn.Module], int]:
    """{"": the EMA weights regdiff ships, ", raw weights": the weights the EMA averages}, steps: the
    raw row tells how much of the gap to the anchor is the EMA's horizon at this budget.
    `train_overrides` is merged into the spec's "train" (a candidate default, e.g. {"lr": 1e-3});
    `also_ema` adds an ", EMA power P inv_gamma G" model per warm-up (shadow_emas)."""
    spec = RunSpec.model_validate({"train": {"steps": 1_000_000, "seed": seed, **(train_overrides or {})},
                                   "checkpoint_every": None})
    started = time.process_time()
    with adam_betas(betas), shadow_emas(also_ema or [], spec.train.ema_decay) as shadows:
        result = train(spec, data, device="cpu",
                       hooks=TrainHooks(should_stop=lambda: time.process_time() - started >= budget))
    state = checkpoint.from_bytes(result.state)
    nets = {"": checkpoint.build_network(state, weights="ema"),
            ", raw weights": checkpoint.build_network(state, weights="model")}
    for (power, inv_gamma), shadow in zip(also_ema or [], shadows, strict=True):
        net = checkpoint.build_network(state, weights="model")
        with torch.no_grad():
            for param, value in zip(net.parameters(), shadow, strict=True):
                param.copy_(value)
        nets[f", EMA power {power:g} inv_gamma {inv_gamma:g}"] = net
    return nets, result.steps_done


def regdiff_setting(args: argparse.Namespace) -> str:
    """What differs from regdiff's defaults in this run, for the row labels ("defaults" if nothing)."""
    parts = [f"{key} {value}" for key, value in args.regdiff_train.items()]
    if args.ema_inv_gamma is not None or args.ema_power is not None:
        parts.append(f"EMA warm-up inv_gamma {trainer.EMA_INV_GAMMA:g} power {trainer.EMA_POWER:g}")
    if args.adam_betas is not None:
        parts.append(f"betas ({args.adam_betas[0]:g}, {args.adam_betas[1]:g})")
    return ", ".join(parts) if parts else "defaults"


def score(net: torch.nn.Module, data: ImageSet, classifier: bytes, n: int, seed: int) -> dict:
    """FCD of n DDIM-50 samples (the sampler the service uses), with its interval and noise floor."""
    shape = (data.images.shape[3], data.images.shape[1], data.images.shape[2])  # (C, H, W)
    scheduler = samplers.make_scheduler(RunSpec().model, "ddim")
    with torch.no_grad():
        images = samplers.sample(net, scheduler, n=n, shape=shape, steps=50, eta=0.0,
                                 generator=torch.Generator().manual_seed(seed))
    return evaluation.evaluate(to_uint8(images), data, classifier_state=classifier, device="cpu")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=120, help="CPU seconds of training for the anchor")
    p.add_argument("--samples", type=int, default=1000, help="samples scored per model (the evaluator's N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="var/bench-cache")
    p.add_argument("--out", type=Path)
    p.add_argument("--only", nargs="+", choices=["anchor", "regdiff", "regdiff-half"],
                   default=["anchor", "regdiff", "regdiff-half"],
                   help="rows to run: the anchor at --budget, regdiff at --budget, regdiff at half of it")
    p.add_argument("--regdiff-budgets", type=float, nargs="+",
                   help="CPU seconds for the regdiff rows instead of --budget and its half (overrides the"
                        " regdiff choices of --only)")
    p.add_argument("--regdiff-train", type=json.loads, default={},
                   help='JSON dict merged into regdiff\'s RunSpec "train", e.g. \'{"lr": 1e-3}\'')
    p.add_argument("--ema-inv-gamma", type=float,
                   help=f"models.trainer.EMA_INV_GAMMA ({trainer.EMA_INV_GAMMA:g})")
    p.add_argument("--ema-power", type=float, help=f"models.trainer.EMA_POWER ({trainer.EMA_POWER:g})")
    p.add_argument("--adam-betas", type=float, nargs=2, help="regdiff's AdamW betas (torch's 0.9 0.999)")
    p.add_argument("--weights", choices=["both", "ema", "raw", "none"], default="both",
                   help="regdiff weights to score: the EMA it ships, the raw weights, both, or none"
                        " (with --also-ema)")
    p.add_argument("--also-ema", nargs="+", default=[], metavar="POWER:INV_GAMMA",
                   help="score more EMAs of the same regdiff training, with these warm-up constants")
    args = p.parse_args(argv)
    if not isinstance(args.regdiff_train, dict):
        p.error("--regdiff-train takes a JSON object")
    if args.ema_inv_gamma is not None:
        trainer.EMA_INV_GAMMA = args.ema_inv_gamma  # read by trainer.ema_decay at every step
    if args.ema_power is not None:
        trainer.EMA_POWER = args.ema_power
    torch.set_num_threads(1)
    data = load_builtin("digits", Path(args.cache_dir))
    classifier = evaluation.train_classifier(data, device="cpu")
    setting = regdiff_setting(args)
    also_ema = [(float(power), float(gamma)) for power, gamma in (x.split(":") for x in args.also_ema)]
    fit_regdiff = functools.partial(train_regdiff, train_overrides=args.regdiff_train, also_ema=also_ema,
                                    betas=tuple(args.adam_betas) if args.adam_betas else None)
    runs = [("anchor (diffusers-style loop)", train_anchor, args.budget)] if "anchor" in args.only else []
    if args.regdiff_budgets:
        runs += [(f"regdiff {setting}", fit_regdiff, budget) for budget in args.regdiff_budgets]
    else:
        runs += [(f"regdiff {setting}", fit_regdiff, args.budget)] if "regdiff" in args.only else []
        runs += ([(f"regdiff {setting}, half the budget", fit_regdiff, args.budget / 2)]
                 if "regdiff-half" in args.only else [])
    keep = {"both": ("", ", raw weights"), "ema": ("",), "raw": (", raw weights",), "none": ()}[args.weights]
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    lines = [(f"digits, unet-xs, batch 64, budget {args.budget:g} CPU s (1 thread), {args.samples} DDIM-50"
              f" samples per model, seed {args.seed}; `{command}`"), "",
             "| model | budget s | steps | FCD | FCD 95% CI | noise floor | wall s |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for label, fit, budget in runs:
        wall = time.perf_counter()
        nets, steps = fit(data, budget, args.seed)
        trained = time.perf_counter() - wall
        for weights, net in nets.items():
            if label.startswith("regdiff") and weights in ("", ", raw weights") and weights not in keep:
                continue
            wall = time.perf_counter()
            result = score(net, data, classifier, args.samples, args.seed)
            low, high = result["fcd_ci"]
            # wall s: this row's training (wall, not the CPU budget) plus its own scoring
            floor, seconds = result["fcd_noise_floor"]["value"], trained + time.perf_counter() - wall
            lines.append(f"| {label}{weights} | {budget:g} | {steps} | {result['fcd']:.1f} |"
                         f" [{low:.1f}, {high:.1f}] | {floor:.1f} | {seconds:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
