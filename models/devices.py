"""Which torch device a job runs on: one rule for training, sampling, export and benches."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` is cuda if available, else cpu; asking for cuda without one is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(name)!r}; allowed: auto, cpu, cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return device
