"""Training state <-> safetensors bytes. Never pickle: a checkpoint is data, not code.

One file holds everything a resume needs to continue bit for bit, and explains itself:
    model.<name>     network weights                    float32
    ema.<name>       EMA weights (what sampling uses)   float32
    optim.<i>.<key>  AdamW state of parameter i         (step, exp_avg, exp_avg_sq)
    rng.<name>       torch.Generator states             uint8
    metadata         format, spec (RunSpec JSON), step, ema_step, image_size, channels, rng_device

`ema_step` is the EMA's own warm-up position: equal to `step` for a run from scratch, larger
for a run fine-tuned with init_from (which continues its source's EMA instead of restarting it).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DModel
from safetensors import safe_open
from safetensors.torch import load, save
from torch import Tensor

from models import datasets, networks
from models.spec import FieldError, ModelSpec, RunSpec

FORMAT = "regdiff.train_state.v1"
GROUPS = ("model", "ema", "optim", "rng")  # the tensor name prefixes, in the order to_bytes writes them


@dataclass
class TrainState:
    spec: dict  # RunSpec JSON
    step: int  # optimizer steps done
    image_size: int
    channels: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Tensor]  # "<param index>.<key>"
    rng: dict[str, Tensor]  # uint8 generator states
    rng_device: str  # device type ("cpu", "cuda") the "device" generator state belongs to
    ema_step: int  # EMA updates behind `ema` (init_from carries it over); drives the EMA warm-up

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.spec["model"])


def to_bytes(state: TrainState) -> bytes:
    groups = {"model": state.model, "ema": state.ema, "optim": state.optimizer, "rng": state.rng}
    tensors = {f"{g}.{k}": v.detach().cpu().contiguous() for g, d in groups.items() for k, v in d.items()}
    metadata = {
        "format": FORMAT,
        "spec": json.dumps(state.spec, sort_keys=True),
        "step": str(state.step),
        "ema_step": str(state.ema_step),
        "image_size": str(state.image_size),
        "channels": str(state.channels),
        "rng_device": state.rng_device,
    }
    return save(tensors, metadata=metadata)


def header_metadata(data: bytes) -> dict[str, str]:
    """Any safetensors file's metadata, from its header (8-byte length + JSON): no tensor is read."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError(f"not a safetensors file: header length {length} exceeds the {len(data) - 8} bytes after it")
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def read_metadata(data: bytes) -> dict[str, str]:
    """A regdiff training state's metadata (header_metadata, format checked)."""
    return _checked(header_metadata(data))


def _checked(metadata: dict[str, str]) -> dict[str, str]:
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"not a regdiff training state (format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    return metadata


def from_bytes(data: bytes) -> TrainState:
    return _state(read_metadata(data), load(data))


def from_file(path: Path, groups: tuple[str, ...] = GROUPS) -> TrainState:
    """A training state from a safetensors file, reading only the tensors of `groups` (the others
    come back empty): an export needs the EMA weights alone, a quarter of the file, so a server
    converting a checkpoint of hundreds of MiB holds that quarter, not the whole."""
    with safe_open(path, framework="pt") as file:
        metadata = _checked(file.metadata() or {})
        tensors = {key: file.get_tensor(key) for key in file.keys() if key.split(".", 1)[0] in groups}
    return _state(metadata, tensors)


def _state(metadata: dict[str, str], tensors: dict[str, Tensor]) -> TrainState:
    groups: dict[str, dict[str, Tensor]] = {group: {} for group in GROUPS}
    for key, tensor in tensors.items():
        group, name = key.split(".", 1)
        groups[group][name] = tensor
    return TrainState(
        spec=json.loads(metadata["spec"]),
        step=int(metadata["step"]),
        image_size=int(metadata["image_size"]),
        channels=int(metadata["channels"]),
        model=groups["model"],
        ema=groups["ema"],
        optimizer=groups["optim"],
        rng=groups["rng"],
        rng_device=metadata["rng_device"],
        ema_step=int(metadata.get("ema_step", metadata["step"])),  # older files: EMA as old as the run
    )


MODEL_FIELDS = ("preset", "prediction", "schedule", "timesteps")


def check_compatible(metadata: dict[str, str], spec: RunSpec) -> None:
    """FieldError("init_from", ...) naming every model field where the checkpoint differs from
    `spec`: its weights would load (same shapes) but mean something else, e.g. eps-trained weights
    read as v-predictions. Reads only header metadata (`read_metadata`); the image size and channels
    are checked for built-in datasets (an upload's shape mismatch fails at load, naming the tensor)."""
    source = json.loads(metadata["spec"])["model"]
    diffs = [(name, source.get(name), getattr(spec.model, name)) for name in MODEL_FIELDS]
    info = datasets.BUILTIN.get(spec.dataset)
    if info is not None:
        diffs += [
            ("image size", int(metadata["image_size"]), info.image_size),
            ("channels", int(metadata["channels"]), info.channels),
        ]
    differing = [f"{name} (checkpoint {ours}, spec {theirs})" for name, ours, theirs in diffs if ours != theirs]
    if differing:
        raise FieldError("init_from", f"the checkpoint's model differs: {', '.join(differing)}")


def model_mismatch(metadata: dict[str, str], spec: RunSpec) -> FieldError | None:
    """`check_compatible`'s error as a value (None when compatible), for callers that collect errors."""
    try:
        check_compatible(metadata, spec)
    except FieldError as exc:
        return exc
    return None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Per-parameter state flattened to "<index>.<key>"; hyperparameters come from the spec."""
    return {f"{i}.{k}": v for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    full = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    full["state"] = state
    optimizer.load_state_dict(full)


def load_weights(module: torch.nn.Module, weights: dict[str, Tensor], what: str) -> None:
    """Strict load with a ValueError that names the first mismatching tensor."""
    own = module.state_dict()
    missing, unexpected = own.keys() - weights.keys(), weights.keys() - own.keys()
    if missing or unexpected:
        raise ValueError(
            f"{what}: keys differ (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for key, tensor in own.items():  # in module order, so the first layer that differs is named
        got, need = tuple(weights[key].shape), tuple(tensor.shape)
        if got != need:
            raise ValueError(f"{what}: {key} has shape {got}, this network needs {need}")
    module.load_state_dict(weights)


def build_network(
    state: TrainState, *, weights: Literal["ema", "model"] = "ema", device: torch.device | str = "cpu"
) -> UNet2DModel:
    """The UNet of a checkpoint, with its EMA (default) or raw weights, in eval mode."""
    net = networks.build_unet(state.model_spec.preset, state.image_size, state.channels)
    load_weights(net, state.ema if weights == "ema" else state.model, f"checkpoint {weights} weights")
    return net.to(device).eval().requires_grad_(False)
