"""train(spec, data) -> TrainResult: the training loop, top to bottom.

Speed habits (see docs/CONTRACTS.md): the whole dataset is one tensor on the device, batch
indices, t and noise come from a torch.Generator on the device, and the host only reads
device values (`.item()`, `.cpu()`) on log and checkpoint steps; between them, metrics and
the first non-finite step are accumulated on the device. The step itself (models/step.py)
reads fixed device buffers only, so on CUDA (`train.compile: auto`) it runs as a captured
CUDA graph. Reproducibility: every random draw comes from the device generator seeded from
`spec.train.seed` (a second, CPU generator is kept in checkpoints for the format but no longer
drawn from), saved in checkpoints, so a resumed run continues bit for bit.

Fine-tuning (`init_weights`, the worker's init_from) continues the source's EMA: its weights
and its warm-up position (`ema_step`), so the average is not overwritten within a few steps;
the trained weights start from the source's EMA (`spec.init_from_weights`, default "ema").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import UNet2DModel
from torch import Tensor

from models import checkpoint, networks, regularizers, validation
from models.datasets import ImageSet, to_tensor
from models.devices import resolve_device
from models.estimators import NetworkCall
from models.objective import Objective
from models.schedule import make_schedule
from models.spec import RunSpec
from models.step import (
    FiniteWatch,
    GraphedStep,
    NonFiniteLoss,  # noqa: F401 (what train() raises: callers import it from here)
    StepInputs,
    Window,
    make_step,
)

HOST_SEED_OFFSET = 2**31  # the CPU generator's seed: never equal to a device seed (<= 2**31 - 1)


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
    """bf16 autocast on CUDA only (on the CPU it is slower than fp32 for these small convs); `auto`
    takes the preset's measured choice (models/networks.py: fp32 for the launch-bound small UNets)."""
    if device.type != "cuda" or spec.train.precision == "fp32":
        return False
    return spec.train.precision == "bf16" or networks.PRESETS[spec.model.preset].cuda_precision == "bf16"


def uses_graphs(spec: RunSpec, device: torch.device) -> bool:
    """`train.compile: auto` captures the step as a CUDA graph on CUDA; the CPU always runs eagerly."""
    return device.type == "cuda" and spec.train.compile == "auto"


def autocast_call(net: UNet2DModel, bf16: bool) -> NetworkCall:
    """The UNet as a plain (x_t, t) -> output function, under bf16 autocast if asked, output
    cast back to fp32 so all loss math is fp32. No autocast weight cache: a CUDA graph capture
    must not keep casts made outside it."""

    def call_net(x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            return net(x, t).sample.float()

    return call_net


EMA_INV_GAMMA = 1.0  # diffusers EMAModel's warm-up constants, chosen so that a default run
EMA_POWER = 1.0  # reaches ema_decay: see ema_decay()


def ema_decay(ema_step: int, target: float) -> float:
    """The decay of EMA update number `ema_step` (0-based): diffusers' EMAModel warm-up
    1 - (1 + k / inv_gamma)^-power, capped by `target` (spec.train.ema_decay).

    With inv_gamma = power = 1 it is k / (k + 1): the EMA is the plain average of every weight
    so far (the random init weighs 0 from the first update), until k = 1/(1 - target) - 1, then
    the exponential average with horizon 1/(1 - target). For the default 0.999 that is step 999,
    half of a default 2,000-step run. diffusers' power 2/3 would need 31,622 steps to reach
    0.999, and the earlier (1 + k) / (10 + k) 8,991: every ema_decay in [0.9956, 1) then gave
    the same weights in a default run. ema_decay values above 1 - 1/steps are still
    indistinguishable: the run ends inside the warm-up.
    """
    return min(target, 1 - (1 + ema_step / EMA_INV_GAMMA) ** -EMA_POWER)


def update_ema(ema_params: list[Tensor], params: list[Tensor], ema_step: int, target: float) -> float:
    """ema <- decay * ema + (1 - decay) * params, in place; returns the decay used (the training
    step does the same lerp inside models/step.py, with 1 - decay in a device buffer)."""
    decay = ema_decay(ema_step, target)
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1 - decay)
    return decay


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
    from another run's checkpoint (its EMA and EMA warm-up position; fresh optimizer, step 0).
    The api checks beforehand that the checkpoint's model matches (checkpoint.check_compatible)."""
    if resume is not None and init_weights is not None:
        raise ValueError("pass either resume or init_weights, not both")
    device = resolve_device(device)
    cfg = spec.train

    # 1. Data, network, EMA copy, optimizer, generators.
    images = to_tensor(data.images, device)  # (N, C, H, W) in [-1, 1]
    held_out = None
    if cfg.val_every:
        images, held_out = validation.split(images, spec.model.timesteps)
    channels, image_size = images.shape[1], images.shape[2]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left untouched
        torch.manual_seed(cfg.seed)
        net = networks.build_unet(spec.model.preset, image_size, channels).to(device).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    graphs = uses_graphs(spec, device)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, fused=device.type == "cuda", capturable=graphs)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    # the host stream: nothing draws from it since the DDIM cut moved to the device; kept (seeded,
    # saved, restored) so checkpoints keep their rng.host tensor and older ones still resume
    host_gen = torch.Generator().manual_seed(cfg.seed + HOST_SEED_OFFSET)
    step = ema_step = 0

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
        step, ema_step = state.step, state.ema_step
    elif init_weights is not None:
        state = checkpoint.from_bytes(init_weights)
        start = state.ema if spec.init_from_weights == "ema" else state.model
        checkpoint.load_weights(net, start, f"init_weights {spec.init_from_weights} weights")
        checkpoint.load_weights(ema, state.ema, "init_weights EMA weights")
        ema_step = state.ema_step

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
                ema_step=ema_step,
            )
        )

    schedule = make_schedule(spec.model, device)
    objective = Objective(spec, schedule, _penalty(spec))
    call_net = autocast_call(net, uses_bf16(spec, device))
    window, watch = Window(device), FiniteWatch(device)
    inputs = StepInputs.allocate(images, cfg.batch_size, objective)
    run_step = make_step(
        call_net=call_net, objective=objective, inputs=inputs, optimizer=optimizer, params=params,
        ema_params=ema_params, grad_clip=cfg.grad_clip, window=window, watch=watch,
    )
    graphed = GraphedStep(run_step, device) if graphs else None
    metrics: dict[str, float] = {}
    val_loss: Tensor | None = None  # the latest held-out loss, read (host sync) on log steps
    logged_at = step

    # 3. The loop: no host sync except on log and checkpoint steps.
    while step < cfg.steps:
        decay = ema_decay(ema_step, cfg.ema_decay)
        inputs.fill(images, objective, gen, step=step, lam_eff=objective.lambda_eff(step), ema_weight=1 - decay)
        (graphed or run_step)(objective.applies(step))
        step += 1
        ema_step += 1
        if held_out is not None and step % cfg.val_every == 0:
            val_loss = validation.loss(call_net, objective, held_out, cfg.batch_size)

        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            watch.check()
            metrics = {
                **window.read(step - logged_at),
                "lambda": objective.lambda_at(step - 1),
                "lr": cfg.lr,
                "ema_horizon": 1 / (1 - decay),  # steps the EMA averages over now
            }
            logged_at = step
            if val_loss is not None:  # the latest, in every log: the run's metrics are the last log
                metrics["val_loss"] = val_loss.item()
            if graphed is not None:  # CUDA graph capture so far, outside the steps' own time
                metrics["compile_seconds"] = graphed.capture_seconds
            hooks.on_log(step, metrics)
        if hooks.should_stop():  # every step (a flag read): a warm shutdown must not wait for a log step
            return TrainResult(step, stopped=True, state=snapshot(), metrics=metrics)
        if spec.checkpoint_every and step % spec.checkpoint_every == 0:
            watch.check()
            hooks.on_checkpoint(step, snapshot())

    return TrainResult(step, stopped=False, state=snapshot(), metrics=metrics)
