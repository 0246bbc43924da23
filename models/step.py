"""One training step as a function of fixed device buffers, so that on CUDA it can be captured
once as a CUDA graph and replayed (models/trainer.py calls it; `train.compile`).

What makes the step capturable (PyTorch's "whole-network capture" recipe):
  1. Static inputs. Every random draw and every per-step scalar is written, eagerly and before the
     step, into buffers that never move (`StepInputs.fill`): the batch (x0, t, noise), the DDIM
     random cut, lam_eff (the warm-up ramp), the EMA weight 1 - decay(k), and the step number the
     NaN watch records. The draws come from the trainer's device generator outside the graph, so
     the graph holds no RNG and its generator needs no registration; resume stays bit-exact.
  2. No host reads inside: lam_eff multiplies (a warm-up at 0 is the same graph), the DDIM penalty
     runs on a fixed-size sub-batch (models/objective.py), the random cut is a `torch.where` on the
     device (models/estimators.py), and the metrics and the first non-finite step accumulate in
     device tensors updated in place.
  3. A capturable optimizer: AdamW(capturable=True) keeps its step count on the device.
The steps `every` skips have no penalty at all: a second graph, chosen by the step number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.estimators import NetworkCall, draw_cut
from models.objective import LossParts, Objective


class NonFiniteLoss(ValueError):
    """The loss or the gradient became NaN/inf; names the first step and the term
    (diffusion, penalty or gradient: a finite loss can still have a NaN gradient)."""

    def __init__(self, step: int, term: str):
        what = "gradient" if term == "gradient" else f"{term} loss"
        super().__init__(
            f"non-finite {what} at step {step}; lower train.lr or lambda, or narrow reg_schedule"
        )
        self.step = step
        self.term = term


class Window:
    """Running sums of the loss parts between two log steps, kept on the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, device=device)

    def add(self, parts: LossParts) -> None:
        self.sums += torch.stack(
            [parts.total, parts.diffusion, parts.penalty_weighted, parts.penalty_sum, parts.penalty_count]
        ).detach()

    def read(self, steps: int) -> dict[str, float]:
        """Means over the last `steps` steps (host sync), and reset. penalty_raw is 0 if it never applied."""
        total, diffusion, weighted, pen_sum, pen_count = (self.sums / max(steps, 1)).tolist()
        self.sums.zero_()
        return {
            "loss": total,
            "diffusion_loss": diffusion,
            "penalty_weighted": weighted,
            "penalty_raw": pen_sum / pen_count if pen_count else 0.0,
        }


class FiniteWatch:
    """Remembers the first step whose diffusion term, penalty term or gradient norm was
    non-finite, on the device (the gradient norm is the one clipping computed anyway)."""

    TERMS: ClassVar[dict[int, str]] = {1: "diffusion", 2: "penalty", 3: "gradient"}

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.term = torch.zeros((), dtype=torch.long, device=device)

    def update(self, parts: LossParts, grad_norm: Tensor, step: Tensor) -> None:
        term = torch.where(parts.diffusion.isfinite(), 0, 1)
        term = torch.where((term == 0) & ~parts.penalty_weighted.isfinite(), 2, term)
        term = torch.where((term == 0) & ~grad_norm.isfinite(), 3, term)
        first = (self.step < 0) & (term > 0)
        self.step.copy_(torch.where(first, step, self.step))  # in place: a graph's buffers never move
        self.term.copy_(torch.where(first, term, self.term))

    def check(self) -> None:
        step, term = int(self.step), int(self.term)  # host sync
        if step >= 0:
            raise NonFiniteLoss(step, self.TERMS[term])


@dataclass
class StepInputs:
    """The step's fixed input buffers, refilled before every step (outside any graph)."""

    x0: Tensor  # (B, C, H, W)
    t: Tensor  # (B,) long
    noise: Tensor  # (B, C, H, W)
    cut: Tensor | None  # () long, the DDIM random cut; None without one
    lam_eff: Tensor  # () the penalty's factor this step
    ema_weight: Tensor  # () 1 - decay of this EMA update
    step: Tensor  # () long, for the NaN watch

    @classmethod
    def allocate(cls, images: Tensor, batch: int, objective: Objective) -> StepInputs:
        device = images.device
        estimator = objective.estimator
        random_cut = objective.stratified and estimator.random_cut and estimator.grad_steps > 1

        def scalar(dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros((), dtype=dtype, device=device)

        return cls(
            x0=images.new_empty((batch, *images.shape[1:])),
            t=torch.zeros(batch, dtype=torch.long, device=device),
            noise=images.new_empty((batch, *images.shape[1:])),
            cut=scalar(torch.long) if random_cut else None,
            lam_eff=scalar(),
            ema_weight=scalar(),
            step=scalar(torch.long),
        )

    def fill(
        self,
        images: Tensor,
        objective: Objective,
        gen: torch.Generator,
        *,
        step: int,
        lam_eff: float,
        ema_weight: float,
    ) -> None:
        """Draw this step's batch from `gen` (indices, t, noise, then the cut: a fixed order, so
        resumed runs continue the stream) and write the scalars. `fill_` passes a host value as
        a kernel argument: no host-device sync."""
        batch = self.t.shape[0]
        idx = torch.randint(images.shape[0], (batch,), generator=gen, device=images.device)  # (B,)
        torch.index_select(images, 0, idx, out=self.x0)
        self.t.copy_(objective.draw_t(batch, gen))
        torch.randn(self.noise.shape, generator=gen, device=images.device, out=self.noise)
        if self.cut is not None:
            self.cut.copy_(draw_cut(objective.estimator.grad_steps, True, gen))
        self.lam_eff.fill_(lam_eff)
        self.ema_weight.fill_(ema_weight)
        self.step.fill_(step)


def make_step(
    *,
    call_net: NetworkCall,
    objective: Objective,
    inputs: StepInputs,
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    ema_params: list[Tensor],
    grad_clip: float,
    window: Window,
    watch: FiniteWatch,
) -> Callable[[bool], None]:
    """The training step `step(with_penalty)`: loss, backward, clipping, AdamW, EMA, metrics.
    Reads only `inputs` and writes only parameters, optimizer state, `window` and `watch`."""

    def step(with_penalty: bool) -> None:
        parts = objective(
            call_net,
            inputs.x0,
            inputs.t,
            inputs.noise,
            lam_eff=inputs.lam_eff if with_penalty else None,
            cut=inputs.cut,
        )
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)  # () on the device
        optimizer.step()
        with torch.no_grad():  # a list of device weights: a lone tensor weight would be read on the host
            torch._foreach_lerp_(ema_params, params, [inputs.ema_weight] * len(params))
        watch.update(parts, grad_norm, inputs.step)
        window.add(parts)

    return step


class GraphedStep:
    """`step(key)` as one CUDA graph per key: the first WARMUP calls of a key run eagerly on a side
    stream (they build AdamW's state, cuDNN/cuBLAS plans and the allocator's blocks), the next one
    captures the graph and replays it, every later one replays. `capture_seconds` is the time
    spent capturing (torch cannot keep a CUDA graph across processes: every run captures anew)."""

    WARMUP = 3

    def __init__(self, step: Callable[[Hashable], None], device: torch.device):
        self.step = step
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self.eager_calls: dict[Hashable, int] = {}
        self.side = torch.cuda.Stream(device)
        self.capture_seconds = 0.0

    def __call__(self, key: Hashable) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        done = self.eager_calls.get(key, 0)
        if done < self.WARMUP:
            self.eager_calls[key] = done + 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.step(key)
            torch.cuda.current_stream().wait_stream(self.side)
            return
        started = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the worker's heartbeat thread may touch CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.step(key)
        self.capture_seconds += time.perf_counter() - started
        self.graphs[key] = graph
        graph.replay()  # capturing recorded the step without running it
