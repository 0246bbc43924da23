"""Fixtures of the models/ tests: one torch thread, and the digits dataset."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from models.datasets import ImageSet, load_builtin


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread is as fast as two, and does not collapse when other
    processes share the 2 CPU cores (two intra-op threads then wait on each other at every op:
    measured 4-14x slower under load, 25% faster when idle)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_builtin("digits")
