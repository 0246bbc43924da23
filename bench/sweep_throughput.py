"""A sweep's throughput: its points trained as one stacked model against the same points one after another.

    .venv/bin/python bench/sweep_throughput.py                                  # CPU: digits, unet-xs, batch 64
    python3 bench/sweep_throughput.py --device cuda --out sweep8.md            # CUDA: mnist-5k, unet-s, batch 128

The sweep: `--points` runs of one spec that differ in lambda (0, then 0.01 up by ~x3) and seed, Tweedie
TV at the default t < 200: what a lambda sweep is. `sequential` trains them one at a time with
models.trainer.train (what the worker does with REGDIFF_SWEEP_BATCHING=off); `stacked` trains them
together with models.stacked.train_stacked (what it does with stacking on). Both with the defaults:
on CUDA the step is captured as a CUDA graph (the stack's step too).

Timing, as bench/train_throughput.py: train.steps = warm-up + timed, a log every `--warmup` steps, the
window from the log after the warm-up to the last log (the trainer's log syncs included, setup, warm-up
and the final snapshot excluded). sequential: the sum of the points' windows; stacked: one window (all
points step together). images/s = points * batch * timed steps / seconds. Rounds alternate which
variant goes first; the ratio is stacked / sequential images/s per round, reported as median [min, max].
On the CPU the clock is this process's CPU time with one torch thread (the box is shared); on CUDA wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.train_throughput import sync
from models.datasets import ImageSet, load_builtin
from models.devices import resolve_device
from models.spec import RunSpec
from models.stacked import StackedPoint, train_stacked
from models.trainer import TrainHooks, train

DEFAULTS = {  # dataset, preset, batch, warm-up steps, timed steps, rounds
    "cpu": ("digits", "unet-xs", 64, 2, 6, 3),
    "cuda": ("mnist-5k", "unet-s", 128, 10, 60, 3),
}


def sweep(points: int, *, dataset: str, preset: str, batch: int, steps: int, log_every: int) -> list[RunSpec]:
    lambdas = [0.0] + [round(0.01 * 3**i, 4) for i in range(points - 1)]
    return [RunSpec.model_validate({
        "dataset": dataset, "model": {"preset": preset}, "lambda": lam, "regularizer": "tv",
        "train": {"steps": steps, "batch_size": batch, "log_every": log_every, "seed": seed},
        "checkpoint_every": None,
    }) for seed, lam in enumerate(lambdas)]


class Window:
    """on_log hook: the clock (after a device sync) at the first and the last log."""

    def __init__(self, device: torch.device, clock: Callable[[], float]):
        self.device, self.clock, self.marks = device, clock, []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        sync(self.device)
        self.marks.append(self.clock())

    @property
    def seconds(self) -> float:
        return self.marks[-1] - self.marks[0]


def sequential(specs: list[RunSpec], data: ImageSet, device: torch.device, clock) -> float:
    total = 0.0
    for spec in specs:
        window = Window(device, clock)
        train(spec, data, device=device, hooks=TrainHooks(on_log=window))
        total += window.seconds
    return total


def stacked(specs: list[RunSpec], data: ImageSet, device: torch.device, clock) -> float:
    window = Window(device, clock)
    points = [StackedPoint(spec, TrainHooks(on_log=window) if i == 0 else TrainHooks()) for i, spec in enumerate(specs)]
    train_stacked(points, data, device=device)
    return window.seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--dataset")
    p.add_argument("--preset")
    p.add_argument("--batch", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int, help="timed steps (a multiple of --warmup)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--cache-dir", default="var/bench-cache")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dataset, preset, batch, warmup, timed, rounds = (
        given if given is not None else default for given, default in zip(
            (args.dataset, args.preset, args.batch, args.warmup, args.steps, args.rounds), DEFAULTS[device.type]))
    if device.type == "cpu":
        torch.set_num_threads(1)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    data = load_builtin(dataset, Path(args.cache_dir))
    specs = sweep(args.points, dataset=dataset, preset=preset, batch=batch, steps=warmup + timed, log_every=warmup)
    images = args.points * batch * timed
    if device.type == "cuda":  # context, cuDNN/cuBLAS handles: not in the first round's figures
        train(specs[0], data, device=device)
    variants = {"sequential": sequential, "stacked": stacked}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            seconds[name].append(variants[name](specs, data, device, clock))
            print(f"round {r + 1} {name}: {images / seconds[name][-1]:.0f} img/s", file=sys.stderr, flush=True)
    ratios = [seq / stk for seq, stk in zip(seconds["sequential"], seconds["stacked"], strict=True)]
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    lines = [f"{args.points}-point lambda sweep, {dataset}, {preset}, batch {batch}, {timed} timed steps per point,"
             f" {rounds} interleaved rounds, {device.type} ({'CPU time, 1 thread' if device.type == 'cpu' else 'wall'});"
             f" torch {torch.__version__}; `{command}`", "",
             "| variant | images/s (median) | rounds |", "|---|---:|---|"]
    for name, values in seconds.items():
        rates = [images / s for s in values]
        lines.append(f"| {name} | {statistics.median(rates):.0f} | {', '.join(f'{x:.0f}' for x in rates)} |")
    lines += ["", f"stacked / sequential throughput: {statistics.median(ratios):.2f}x"
                  f" [{min(ratios):.2f}, {max(ratios):.2f}] (median [min, max] over rounds)"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
