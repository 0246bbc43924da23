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


EMA_INV_GAMMA = 150.0  # the EMA warm-up's constants (ema_decay()): measured on the CPU time-to-quality
EMA_POWER = 3.0  # bench, and chosen so that a default 2,000-step run reaches ema_decay 0.999


def ema_decay(ema_step: int, target: float) -> float:
    """The decay of EMA update number `ema_step` (0-based): diffusers' EMAModel warm-up
    1 - (1 + k / inv_gamma)^-power, capped by `target` (spec.train.ema_decay).

    The horizon 1/(1 - decay) = (1 + k/150)^3 grows with the run: the first update copies the
    weights, after 500 steps the EMA averages ~80 steps, after 1,000 ~450, and it reaches 1,000
    (ema_decay 0.999) at step 1,350, so a default 2,000-step run ends with the horizon asked for
    and different ema_decay values give different weights (tests/models/test_trainer.py). A short
    run's EMA averages its recent, good iterates rather than its start: with inv_gamma = power = 1
    (the plain average of every iterate until step 999) a 650-step CPU run's EMA scored FCD 1,248
    on digits against 301 for its raw weights; with these constants it beats them
    (bench/README.md, time to quality). diffusers' power 2/3 would need 31,622 steps to reach 0.999.
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


class RunState:
    """One run's training state and its loop bookkeeping, shared by `train` (one run) and
    models/stacked.py (a sweep's points as one stacked model): the weights, EMA and AdamW it
    checkpoints, its generators and counters, its objective and step buffers, and what it logs.

    Built from scratch, from a checkpoint (`resume`, continued bit for bit) or from another run's
    weights (`init_weights`). The stacked trainer keeps the live weights in its stacked tensors and
    sets `before_snapshot` to copy this run's slice back before a checkpoint is written."""

    def __init__(
        self,
        spec: RunSpec,
        images: Tensor,
        device: torch.device,
        *,
        hooks: TrainHooks = NO_HOOKS,
        resume: bytes | None = None,
        init_weights: bytes | None = None,
        graphs: bool = False,
    ):
        if resume is not None and init_weights is not None:
            raise ValueError("pass either resume or init_weights, not both")
        cfg = self.cfg = spec.train
        self.spec, self.hooks, self.device = spec, hooks, device
        self.held_out = None
        if cfg.val_every:
            images, self.held_out = validation.split(images, spec.model.timesteps)
        self.images = images  # (N, C, H, W) in [-1, 1]: what the batches are drawn from
        self.channels, self.image_size = images.shape[1], images.shape[2]
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left untouched
            torch.manual_seed(cfg.seed)
            self.net = networks.build_unet(spec.model.preset, self.image_size, self.channels).to(device).train()
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.params, self.ema_params = list(self.net.parameters()), list(self.ema.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, fused=device.type == "cuda", capturable=graphs)
        self.gen = torch.Generator(device).manual_seed(cfg.seed)
        # the host stream: nothing draws from it since the DDIM cut moved to the device; kept (seeded,
        # saved, restored) so checkpoints keep their rng.host tensor and older ones still resume
        self.host_gen = torch.Generator().manual_seed(cfg.seed + HOST_SEED_OFFSET)
        self.step = self.ema_step = 0
        if resume is not None:
            self._resume(resume)
        elif init_weights is not None:
            self._init_from(init_weights)
        self.objective = Objective(spec, make_schedule(spec.model, device), _penalty(spec))
        self.window, self.watch = Window(device), FiniteWatch(device)
        self.metrics: dict[str, float] = {}
        self.val_loss: Tensor | None = None  # the latest held-out loss, read (host sync) on log steps
        self.logged_at = self.step
        self.before_snapshot: Callable[[], None] = lambda: None

    def _resume(self, data: bytes) -> None:
        state = checkpoint.from_bytes(data)
        if state.spec["model"] != self.spec.model.model_dump(mode="json"):
            raise ValueError(f"resume: checkpoint model {state.spec['model']} differs from spec.model")
        checkpoint.load_weights(self.net, state.model, "resume model weights")
        checkpoint.load_weights(self.ema, state.ema, "resume EMA weights")
        checkpoint.load_optimizer_tensors(self.optimizer, state.optimizer)
        self.host_gen.set_state(state.rng["host"])
        if state.rng_device == self.device.type:
            self.gen.set_state(state.rng["device"])
        else:  # another device type cannot take this state: reproducible, but not the same stream
            self.gen.manual_seed(self.cfg.seed + state.step)
        self.step, self.ema_step = state.step, state.ema_step

    def _init_from(self, data: bytes) -> None:
        state = checkpoint.from_bytes(data)
        start = state.ema if self.spec.init_from_weights == "ema" else state.model
        checkpoint.load_weights(self.net, start, f"init_weights {self.spec.init_from_weights} weights")
        checkpoint.load_weights(self.ema, state.ema, "init_weights EMA weights")
        self.ema_step = state.ema_step

    def snapshot(self) -> bytes:
        self.before_snapshot()
        return checkpoint.to_bytes(
            checkpoint.TrainState(
                spec=self.spec.to_json(),
                step=self.step,
                image_size=self.image_size,
                channels=self.channels,
                model=self.net.state_dict(),
                ema=self.ema.state_dict(),
                optimizer=checkpoint.optimizer_tensors(self.optimizer),
                rng={"device": self.gen.get_state(), "host": self.host_gen.get_state()},
                rng_device=self.device.type,
                ema_step=self.ema_step,
            )
        )

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    def result(self, *, stopped: bool) -> TrainResult:
        """Where the run is now, as `train` returns it (the state snapshotted)."""
        return TrainResult(self.step, stopped=stopped, state=self.snapshot(), metrics=self.metrics)

    def ema_weight(self) -> float:
        """1 - decay of this step's EMA update."""
        return 1 - ema_decay(self.ema_step, self.cfg.ema_decay)

    def fill(self, inputs: StepInputs) -> bool:
        """Write this step's draws and scalars into `inputs`; whether the step computes the penalty."""
        lam_eff = self.objective.lambda_eff(self.step)
        inputs.fill(self.images, self.objective, self.gen, step=self.step, lam_eff=lam_eff,
                    ema_weight=self.ema_weight())
        return self.objective.applies(self.step)

    def after_step(self, call_net: NetworkCall, compile_seconds: float | None = None) -> TrainResult | None:
        """Count the step done, then validate, log, checkpoint as due. The run's TrainResult when it
        stops (hooks.should_stop) or ends; raises NonFiniteLoss on a log or checkpoint step."""
        decay = ema_decay(self.ema_step, self.cfg.ema_decay)  # the decay the step just used
        self.step += 1
        self.ema_step += 1
        step, cfg = self.step, self.cfg
        if self.held_out is not None and step % cfg.val_every == 0:
            self.val_loss = validation.loss(call_net, self.objective, self.held_out, cfg.batch_size)
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            self.watch.check()
            self.metrics = {
                **self.window.read(step - self.logged_at),
                "lambda": self.objective.lambda_at(step - 1),
                "lr": cfg.lr,
                "ema_horizon": 1 / (1 - decay),  # steps the EMA averages over now
            }
            self.logged_at = step
            if self.val_loss is not None:  # the latest, in every log: the run's metrics are the last log
                self.metrics["val_loss"] = self.val_loss.item()
            if compile_seconds is not None:  # CUDA graph capture so far, outside the steps' own time
                self.metrics["compile_seconds"] = compile_seconds
            self.hooks.on_log(step, self.metrics)
        if self.hooks.should_stop():  # every step (a flag read): a warm shutdown must not wait for a log step
            return self.result(stopped=True)
        if self.spec.checkpoint_every and step % self.spec.checkpoint_every == 0:
            self.watch.check()
            self.hooks.on_checkpoint(step, self.snapshot())
        if last:
            return self.result(stopped=False)
        return None


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
    device = resolve_device(device)
    graphs = uses_graphs(spec, device)
    run = RunState(spec, to_tensor(data.images, device), device, hooks=hooks, resume=resume,
                   init_weights=init_weights, graphs=graphs)
    call_net = autocast_call(run.net, uses_bf16(spec, device))
    inputs = StepInputs.allocate(run.images, spec.train.batch_size, run.objective)
    run_step = make_step(
        call_net=call_net, objective=run.objective, inputs=inputs, optimizer=run.optimizer, params=run.params,
        ema_params=run.ema_params, grad_clip=spec.train.grad_clip, window=run.window, watch=run.watch,
    )
    graphed = GraphedStep(run_step, device) if graphs else None
    if run.done:  # resumed at its last step
        return run.result(stopped=False)
    # The loop: no host sync except on log and checkpoint steps.
    while True:
        (graphed or run_step)(run.fill(inputs))
        result = run.after_step(call_net, graphed.capture_seconds if graphed else None)
        if result is not None:
            return result
