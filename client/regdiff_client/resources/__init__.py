from .checkpoints import Checkpoints
from .datasets import Datasets
from .runs import AsyncRuns, Runs
from .samples import AsyncSamples, Samples
from .sweeps import AsyncSweeps, Sweeps

__all__ = ["AsyncRuns", "AsyncSamples", "AsyncSweeps", "Checkpoints", "Datasets", "Runs", "Samples", "Sweeps"]
