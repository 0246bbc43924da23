"""Built-in datasets load offline with the shapes their DatasetInfo promises, and the
torchvision-backed ones explain where their files go instead of downloading them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models import datasets
from models.datasets import BUILTIN, DatasetUnavailable, load_builtin

TORCHVISION_SETS = ["mnist", "fashion-mnist", "cifar10"]


def _check_matches_info(name: str, data: datasets.ImageSet, count: int) -> None:
    info = BUILTIN[name]
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
    assert data.images.shape == (count, info.image_size, info.image_size, info.channels)
    assert data.labels.shape == (count,)
    assert data.labels.max() < info.num_classes


def test_digits_matches_its_info() -> None:
    data = load_builtin("digits")
    _check_matches_info("digits", data, BUILTIN["digits"].count)
    assert data.images.max() == 255


def test_mnist_5k_matches_its_info_and_is_cached(tmp_path: Path) -> None:
    data = load_builtin("mnist-5k", tmp_path)
    _check_matches_info("mnist-5k", data, 5000)
    assert (np.diff(data.labels) >= 0).all(), "documented as sorted by class"
    assert data.images[:, :2].max() == 0, "28 -> 32 padding is zeros"
    cached = load_builtin("mnist-5k", tmp_path)
    np.testing.assert_array_equal(cached.images, data.images)
    assert [p.name for p in tmp_path.iterdir()] == ["mnist-5k.npz"]


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_absent_files_name_the_folder_and_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetUnavailable) as exc:
        load_builtin(name, data_dir=tmp_path)
    message = str(exc.value)
    folder = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}
    assert f"<data_dir>/{folder[name]}" in message and str(tmp_path) not in message  # never the server's path
    assert ("train-images-idx3-ubyte" if "mnist" in name else "data_batch_1") in message
    assert not any(tmp_path.iterdir()), "nothing was downloaded"


def test_no_data_dir_is_explained() -> None:
    with pytest.raises(DatasetUnavailable, match="data_dir"):
        load_builtin("mnist")


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format torchvision reads: magic (0, 0, uint8 code 8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_files_in_data_dir_load_padded(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.array([7, 0, 9], np.uint8))
    data = load_builtin(name, data_dir=tmp_path)
    _check_matches_info(name, data, 3)
    np.testing.assert_array_equal(data.images[:, 2:30, 2:30, 0], images)
    assert data.labels.tolist() == [7, 0, 9]


def test_corrupt_cifar_files_are_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"not cifar")
    with pytest.raises(DatasetUnavailable, match="cifar-10-batches-py"):
        load_builtin("cifar10", data_dir=tmp_path)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(KeyError, match="mnist-5k"):
        load_builtin("imagenet")


def test_tensor_round_trip() -> None:
    images = load_builtin("digits").images[:8]
    x = datasets.to_tensor(images)
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(datasets.to_uint8(x), images)
