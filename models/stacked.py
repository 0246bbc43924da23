"""A sweep's points trained together as one stacked model: `train_stacked(points, data)`.

Why: the points of a sweep are the same small UNet on the same data, differing in lambda, the
regularizer, its schedule, the estimator or the seed. One at a time, each run of a small UNet keeps
a GPU a few percent busy (launch-bound). Stacked, the P networks' weights become one tensor per
parameter with a leading point axis (`torch.func.stack_module_state`'s layout) and one `vmap`ped
forward/backward runs all P as grouped kernels, while everything that makes a point a run stays
its own: its random stream and batches, its objective, its gradient clipping (per-point norms),
its AdamW moments (AdamW is elementwise: a stacked AdamW is P AdamWs), its EMA, its metrics, its
non-finite watch and its checkpoints, which are ordinary single-run checkpoints. A point trains to
the same numbers as `train` alone, up to float rounding (tests/models/test_stacked.py).

Measured on the CPU (2 cores, 1 torch thread, digits, unet-xs, batch 64): an 8-point stack trained at
0.93x [0.92, 1.00] the images/s of the 8 runs one after another (bench/sweep_throughput.py), so the
worker stacks a sweep on CUDA only unless told to (REGDIFF_SWEEP_BATCHING, worker/stacking.py).

A point that stops (cancelled, time limit, lease lost), fails (non-finite loss) or ends (a shorter
`train.steps`) leaves the stack at that step with its own outcome; the others go on, restacked
from their in-memory checkpoints (a resume, exact), so one point never holds the others back.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from models.datasets import ImageSet, to_tensor
from models.devices import resolve_device
from models.estimators import NetworkCall
from models.objective import LossParts
from models.spec import RunSpec
from models.step import GraphedStep, NonFiniteLoss, StepInputs
from models.trainer import NO_HOOKS, RunState, TrainHooks, TrainResult, uses_bf16, uses_graphs

# What the points of one stack share: the network and its inputs (dataset, model, batch size) and
# what one stacked optimizer and one step function hold (lr, precision, compile). Everything else
# may differ per point. A fine-tuned point (init_from) starts from another run's weights and EMA
# position: it trains alone.
SHARED_FIELDS = ("dataset", "model", "train.batch_size", "train.lr", "train.precision", "train.compile")


def _field(spec: RunSpec, path: str) -> object:
    value: object = spec
    for name in path.split("."):
        value = getattr(value, name)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def stack_key(spec: RunSpec) -> str | None:
    """Points with equal keys can share a stack; None: the point trains alone (init_from)."""
    if spec.init_from is not None:
        return None
    return repr([_field(spec, path) for path in SHARED_FIELDS])


def stack_differences(a: RunSpec, b: RunSpec) -> list[str]:
    """The shared fields (SHARED_FIELDS, and init_from) where two points differ: why they cannot
    share a stack, for the run's events."""
    fields = [path for path in SHARED_FIELDS if _field(a, path) != _field(b, path)]
    if a.init_from is not None or b.init_from is not None:
        fields.append("init_from")
    return fields


@dataclass(frozen=True)
class StackedPoint:
    spec: RunSpec
    hooks: TrainHooks = NO_HOOKS
    resume: bytes | None = None  # a checkpoint to continue; every point of a stack at the same step


Outcome = TrainResult | NonFiniteLoss


def train_stacked(
    points: list[StackedPoint],
    data: ImageSet,
    *,
    device: str | torch.device = "auto",
    on_outcome: Callable[[int, Outcome], None] = lambda index, outcome: None,
) -> list[Outcome]:
    """Train the points together; per point, in order, its TrainResult (ended or stopped) or the
    NonFiniteLoss that failed it. `on_outcome(index, outcome)` is called as each point leaves, while
    the others train on: a point that ends early is done then, not when the last one ends. Raises
    ValueError when the points cannot share a stack."""
    keys = {stack_key(point.spec) for point in points}
    if len(keys) != 1 or None in keys:
        raise ValueError(f"points differ in {stack_differences(points[0].spec, points[-1].spec)}: they cannot share a stack")
    device = resolve_device(device)
    images = to_tensor(data.images, device)
    outcomes: dict[int, Outcome] = {}
    resumes = [point.resume for point in points]
    while len(outcomes) < len(points):
        active = [i for i in range(len(points)) if i not in outcomes]
        stack = Stack([dataclasses.replace(points[i], resume=resumes[i]) for i in active], images, device)
        left = stack.train_until_one_leaves()
        for local, i in enumerate(active):
            if local in left:
                outcomes[i] = left[local]
                on_outcome(i, outcomes[i])
            else:  # restacked without the points that left, from where it is (a resume: exact)
                resumes[i] = stack.runs[local].snapshot()
    return [outcomes[i] for i in range(len(points))]


class Stack:
    """P runs as stacked tensors: parameter i of every point in one (P, ...) tensor."""

    def __init__(self, points: list[StackedPoint], images: Tensor, device: torch.device):
        spec = points[0].spec
        graphs = uses_graphs(spec, device)
        self.runs = [RunState(p.spec, images, device, hooks=p.hooks, resume=p.resume, graphs=graphs) for p in points]
        if len({run.step for run in self.runs}) != 1:
            raise ValueError(f"stacked points must be at one step, not {sorted({run.step for run in self.runs})}")
        first = self.runs[0]
        self.names = [name for name, _ in first.net.named_parameters()]
        with torch.no_grad():
            self.params = [torch.stack(p).requires_grad_() for p in zip(*(run.params for run in self.runs))]
            self.ema_params = [torch.stack(p) for p in zip(*(run.ema_params for run in self.runs))]
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.train.lr, fused=device.type == "cuda", capturable=graphs)
        for i, param in enumerate(self.params):  # the points' AdamW moments (resumed), stacked the same way
            states = [run.optimizer.state.get(run.params[i]) for run in self.runs]
            if states[0]:
                self.optimizer.state[param] = {
                    key: value.clone() if key == "step" else torch.stack([s[key] for s in states])
                    for key, value in states[0].items()
                }
        for p, run in enumerate(self.runs):
            run.before_snapshot = lambda p=p: self._write_back(p)

        count = len(self.runs)
        self.max_norm = torch.tensor([run.cfg.grad_clip for run in self.runs], device=device)
        self.ema_weights = torch.zeros(count, device=device)  # (P,) 1 - decay of each point's EMA update
        self.ema_weight_views = [self.ema_weights.view(-1, *[1] * (p.dim() - 1)) for p in self.params]
        batch = spec.train.batch_size
        self.x0 = images.new_empty((count, batch, *images.shape[1:]))
        self.t = torch.zeros((count, batch), dtype=torch.long, device=device)
        self.noise = torch.empty_like(self.x0)
        step = torch.zeros((), dtype=torch.long, device=device)
        self.inputs = [
            dataclasses.replace(StepInputs.allocate(run.images, batch, run.objective), x0=self.x0[p], t=self.t[p],
                                noise=self.noise[p], ema_weight=self.ema_weights[p], step=step)
            for p, run in enumerate(self.runs)
        ]  # each point fills its slice of the stacked batch from its own generator
        self.schedule = first.objective.schedule  # one model spec: one noise schedule
        base = copy.deepcopy(first.net).to("meta")  # the structure; the weights come in per call
        bf16 = uses_bf16(spec, device)

        def one(weights: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                return functional_call(base, weights, (x, t)).sample.float()

        self.one = one
        self.all = vmap(one)  # (P, ...) weights, (P, B, C, H, W) x_t, (P, B) t -> (P, B, C, H, W)
        self.graphed = GraphedStep(self.step, device) if graphs else None

    def point_net(self, p: int) -> NetworkCall:
        """Point p's network alone (its slice of the stacked weights): the DDIM estimator's further
        calls and the held-out loss. The slices are taken when it is called, not when it is made:
        after every step each point is handed one, and most steps never call it (no validation due)."""

        def call(x: Tensor, t: Tensor) -> Tensor:
            return self.one({name: param[p] for name, param in zip(self.names, self.params, strict=True)}, x, t)

        return call

    def losses(self, with_penalty: tuple[bool, ...]) -> list[LossParts]:
        """Every point's loss on its filled inputs: one vmapped forward pass, then each point's own
        objective (`with_penalty`: each point's objective.applies(step))."""
        shape = self.x0.shape
        x_t = self.schedule.add_noise(self.x0.flatten(0, 1), self.t.flatten(), self.noise.flatten(0, 1)).view(shape)
        output = self.all(dict(zip(self.names, self.params, strict=True)), x_t, self.t)  # (P, B, C, H, W)
        return [
            run.objective.loss(self.point_net(p), inputs.x0, inputs.t, inputs.noise, x_t[p], output[p],
                               lam_eff=inputs.lam_eff if penalised else None, cut=inputs.cut)
            for p, (run, inputs, penalised) in enumerate(zip(self.runs, self.inputs, with_penalty, strict=True))
        ]

    def step(self, with_penalty: Hashable) -> None:
        """One training step of every point: `with_penalty` is the tuple of each point's
        objective.applies(step) (a key of GraphedStep's graphs)."""
        parts = self.losses(with_penalty)
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack([part.total for part in parts]).sum().backward()  # point p's loss reaches only its slice
        grad_norms = self._clip()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, self.ema_weight_views)
        for p, (run, part) in enumerate(zip(self.runs, parts, strict=True)):
            run.watch.update(part, grad_norms[p], self.inputs[p].step)
            run.window.add(part)

    def _clip(self) -> Tensor:
        """clip_grad_norm_ per point: each point's gradient norm over all its parameters, (P,)."""
        grads = [param.grad for param in self.params]
        norms = torch.stack([g.detach().pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()  # (P,)
        coef = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s factor
        torch._foreach_mul_(grads, [coef.view(-1, *[1] * (g.dim() - 1)) for g in grads])
        return norms

    def _write_back(self, p: int) -> None:
        """Copy point p's slice into its RunState's own network, EMA and AdamW, which its checkpoint
        reads (models/trainer.py RunState.snapshot)."""
        run = self.runs[p]
        with torch.no_grad():
            torch._foreach_copy_(run.params, [param[p] for param in self.params])
            torch._foreach_copy_(run.ema_params, [param[p] for param in self.ema_params])
        for own, param in zip(run.params, self.params, strict=True):
            state = self.optimizer.state.get(param)
            if state:
                run.optimizer.state[own] = {
                    key: value.clone() if key == "step" else value[p].clone() for key, value in state.items()
                }

    def train_until_one_leaves(self) -> dict[int, Outcome]:
        """Step every point until at least one stops, fails or ends: {point: its outcome}."""
        left: dict[int, Outcome] = {}
        for p, run in enumerate(self.runs):
            if run.done:  # resumed at its last step
                left[p] = run.result(stopped=False)
        while not left:
            with_penalty = tuple(run.fill(inputs) for run, inputs in zip(self.runs, self.inputs, strict=True))
            (self.graphed or self.step)(with_penalty)
            capture = self.graphed.capture_seconds if self.graphed else None
            for p, run in enumerate(self.runs):
                try:
                    result = run.after_step(self.point_net(p), capture)
                except NonFiniteLoss as exc:
                    left[p] = exc
                    continue
                if result is not None:
                    left[p] = result
        return left
