"""train(spec, data) -> TrainResult: the training loop, top to bottom.

Speed habits (see docs/CONTRACTS.md): the whole dataset is one tensor on the device, batch
indices, t and noise come from a torch.Generator on the device, and the host only reads
device values (`.item()`, `.cpu()`) on log and checkpoint steps; between them, metrics and
the first non-finite step are accumulated on the device. Reproducibility: every random draw
comes from two generators seeded from `spec.train.seed` (one on the device, one on the CPU
for host-side choices), both saved in checkpoints, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import UNet2DModel
from torch import Tensor

from models import checkpoint, networks, regularizers
from models.datasets import ImageSet, to_tensor
from models.devices import resolve_device
from models.estimators import NetworkCall
from models.objective import LossParts, Objective
from models.schedule import make_schedule
from models.spec import RunSpec

HOST_SEED_OFFSET = 2**31  # the CPU generator's seed: never equal to a device seed (<= 2**31 - 1)


class NonFiniteLoss(ValueError):
    """The loss became NaN/inf; names the first step and the term (diffusion or penalty)."""

    def __init__(self, step: int, term: str):
        super().__init__(
            f"non-finite {term} loss at step {step}; lower train.lr or lambda, or narrow reg_schedule"
        )
        self.step = step
        self.term = term


@dataclass(frozen=True)
class TrainHooks:
    on_log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    on_checkpoint: Callable[[int, bytes], None] = lambda step, state: None
    should_stop: Callable[[], bool] = lambda: False


NO_HOOKS = TrainHooks()


@dataclass
class TrainResult:
    steps_done: int
    stopped: bool
    state: bytes  # final safetensors state (models/checkpoint.py)
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged metrics


def uses_bf16(spec: RunSpec, device: torch.device) -> bool:
    """bf16 autocast on CUDA only: on CPU it is slower than fp32 for these small convs."""
    return device.type == "cuda" and spec.train.precision in ("auto", "bf16")


def autocast_call(net: UNet2DModel, bf16: bool) -> NetworkCall:
    """The UNet as a plain (x_t, t) -> output function, under bf16 autocast if asked, output
    cast back to fp32 so all loss math is fp32."""

    def call_net(x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x, t).sample.float()

    return call_net


def ema_decay(step: int, target: float) -> float:
    """diffusers EMAModel-style warm-up: a fixed 0.999 would still be half the random init
    after ~700 steps; (1 + step) / (10 + step) lets the average forget it early."""
    return min(target, (1 + step) / (10 + step))


class _Window:
    """Running sums of the loss parts between two log steps, kept on the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, device=device)
        self.steps = 0

    def add(self, parts: LossParts) -> None:
        self.sums += torch.stack(
            [parts.total, parts.diffusion, parts.penalty_weighted, parts.penalty_sum, parts.penalty_count]
        ).detach()
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Means over the window (host sync) and reset. penalty_raw is 0 if it never applied."""
        total, diffusion, weighted, pen_sum, pen_count = (self.sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return {
            "loss": total,
            "diffusion_loss": diffusion,
            "penalty_weighted": weighted,
            "penalty_raw": pen_sum / pen_count if pen_count else 0.0,
        }


class _FiniteWatch:
    """Remembers the first step whose diffusion or penalty term was non-finite, on the device."""

    TERMS = {1: "diffusion", 2: "penalty"}

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.term = torch.zeros((), dtype=torch.long, device=device)

    def update(self, parts: LossParts, step: int) -> None:
        term = torch.where(parts.diffusion.isfinite(), 0, 1)
        term = torch.where((term == 0) & ~parts.penalty_weighted.isfinite(), 2, term)
        first = (self.step < 0) & (term > 0)
        self.step = torch.where(first, step, self.step)
        self.term = torch.where(first, term, self.term)

    def check(self) -> None:
        step, term = int(self.step), int(self.term)  # host sync
        if step >= 0:
            raise NonFiniteLoss(step, self.TERMS[term])


def _penalty(spec: RunSpec) -> regularizers.WeightedSum | None:
    if spec.lambda_ == 0 or not spec.regularizer:
        return None
    return regularizers.build([term.model_dump() for term in spec.regularizer])


def train(
    spec: RunSpec,
    data: ImageSet,
    *,
    device: str | torch.device = "auto",
    hooks: TrainHooks = NO_HOOKS,
    resume: bytes | None = None,
    init_weights: bytes | None = None,
) -> TrainResult:
    """Train `spec` on `data`; `resume` continues a checkpoint exactly, `init_weights` fine-tunes
    from another run's weights and EMA (fresh optimizer, step 0)."""
    if resume is not None and init_weights is not None:
        raise ValueError("pass either resume or init_weights, not both")
    device = resolve_device(device)
    cfg = spec.train

    # 1. Data, network, EMA copy, optimizer, generators.
    images = to_tensor(data.images, device)  # (N, C, H, W) in [-1, 1]
    n_images, channels, image_size = images.shape[0], images.shape[1], images.shape[2]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left untouched
        torch.manual_seed(cfg.seed)
        net = networks.build_unet(spec.model.preset, image_size, channels).to(device).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, fused=device.type == "cuda")
    gen = torch.Generator(device).manual_seed(cfg.seed)
    host_gen = torch.Generator().manual_seed(cfg.seed + HOST_SEED_OFFSET)
    step = 0

    # 2. Resume everything, or start from another run's weights.
    if resume is not None:
        state = checkpoint.from_bytes(resume)
        if state.spec["model"] != spec.model.model_dump(mode="json"):
            raise ValueError(f"resume: checkpoint model {state.spec['model']} differs from spec.model")
        checkpoint.load_weights(net, state.model, "resume model weights")
        checkpoint.load_weights(ema, state.ema, "resume EMA weights")
        checkpoint.load_optimizer_tensors(optimizer, state.optimizer)
        host_gen.set_state(state.rng["host"])
        if state.rng_device == device.type:
            gen.set_state(state.rng["device"])
        else:  # another device type cannot take this state: reproducible, but not the same stream
            gen.manual_seed(cfg.seed + state.step)
        step = state.step
    elif init_weights is not None:
        state = checkpoint.from_bytes(init_weights)
        checkpoint.load_weights(net, state.model, "init_weights model weights")
        checkpoint.load_weights(ema, state.ema, "init_weights EMA weights")

    def snapshot() -> bytes:
        return checkpoint.to_bytes(
            checkpoint.TrainState(
                spec=spec.to_json(),
                step=step,
                image_size=image_size,
                channels=channels,
                model=net.state_dict(),
                ema=ema.state_dict(),
                optimizer=checkpoint.optimizer_tensors(optimizer),
                rng={"device": gen.get_state(), "host": host_gen.get_state()},
                rng_device=device.type,
            )
        )

    schedule = make_schedule(spec.model, device)
    objective = Objective(spec, schedule, _penalty(spec))
    call_net = autocast_call(net, uses_bf16(spec, device))
    window, watch = _Window(device), _FiniteWatch(device)
    metrics: dict[str, float] = {}

    # 3. The loop: no host sync except on log and checkpoint steps.
    while step < cfg.steps:
        idx = torch.randint(n_images, (cfg.batch_size,), generator=gen, device=device)  # (B,)
        x0 = images[idx]  # (B, C, H, W)
        t = torch.randint(schedule.timesteps, (cfg.batch_size,), generator=gen, device=device)  # (B,)
        noise = torch.randn(x0.shape, generator=gen, device=device)  # (B, C, H, W)
        parts = objective(call_net, x0, t, noise, step=step, generator=host_gen)

        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - ema_decay(step, cfg.ema_decay))
        watch.update(parts, step)
        window.add(parts)
        step += 1

        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            watch.check()
            metrics = {**window.read(), "lambda": objective.lambda_at(step - 1), "lr": cfg.lr}
            hooks.on_log(step, metrics)
            if hooks.should_stop():
                return TrainResult(step, stopped=True, state=snapshot(), metrics=metrics)
        if spec.checkpoint_every and step % spec.checkpoint_every == 0:
            watch.check()
            hooks.on_checkpoint(step, snapshot())

    return TrainResult(step, stopped=False, state=snapshot(), metrics=metrics)
