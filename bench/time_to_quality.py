"""Time to quality on the CPU: what a user waits for is a good model, not steps per second.

    .venv/bin/python bench/time_to_quality.py --budget 120 --samples 1000      # digits, unet-xs

The anchor (the diffusers-example loop of bench/train_throughput.py: fp32, no EMA, batch 64) and
regdiff with its defaults (models.trainer.train on a default RunSpec: EMA 0.999 with warm-up,
Tweedie TV at lambda 0.1, t < 200) each train for a budget of seconds, then DDIM-50 samples from
what each would ship (the anchor's weights, regdiff's EMA) are scored by models/evaluation.py: FCD
with its 95% bootstrap interval and noise floor. regdiff also runs on half the budget: the issue's
target is that regdiff reaches the anchor's final FCD in at most half its time.

Clock: this process's CPU time with one torch thread (as train_throughput.py on the CPU: the 2-core
box is shared, and wall time there measures the neighbours). regdiff stops at its first log step
(every 10 steps) past the budget; the anchor checks after every step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.train_throughput import anchor_steps
from models import checkpoint, evaluation, samplers
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


def train_regdiff(data: ImageSet, budget: float, seed: int) -> tuple[dict[str, torch.nn.Module], int]:
    """{"": the EMA weights regdiff ships, ", raw weights": the weights the EMA averages}, steps: the
    raw row tells how much of the gap to the anchor is the EMA's horizon at this budget."""
    spec = RunSpec.model_validate({"train": {"steps": 1_000_000, "seed": seed}, "checkpoint_every": None})
    started = time.process_time()
    result = train(spec, data, device="cpu",
                   hooks=TrainHooks(should_stop=lambda: time.process_time() - started >= budget))
    state = checkpoint.from_bytes(result.state)
    nets = {"": checkpoint.build_network(state, weights="ema"),
            ", raw weights": checkpoint.build_network(state, weights="model")}
    return nets, result.steps_done


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
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_builtin("digits", Path(args.cache_dir))
    classifier = evaluation.train_classifier(data, device="cpu")
    runs = [("anchor (diffusers-style loop)", train_anchor, args.budget),
            ("regdiff defaults", train_regdiff, args.budget),
            ("regdiff defaults, half the budget", train_regdiff, args.budget / 2)]
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    lines = [(f"digits, unet-xs, batch 64, budget {args.budget:g} CPU s (1 thread), {args.samples} DDIM-50"
              f" samples per model, seed {args.seed}; `{command}`"), "",
             "| model | budget s | steps | FCD | FCD 95% CI | noise floor |", "|---|---:|---:|---:|---|---:|"]
    for label, fit, budget in runs:
        nets, steps = fit(data, budget, args.seed)
        for weights, net in nets.items():
            result = score(net, data, classifier, args.samples, args.seed)
            low, high = result["fcd_ci"]
            lines.append(f"| {label}{weights} | {budget:g} | {steps} | {result['fcd']:.1f} | [{low:.1f}, {high:.1f}] |"
                         f" {result['fcd_noise_floor']['value']:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
