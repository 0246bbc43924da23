from .checkpoints import Checkpoints
from .datasets import Datasets
from .runs import AsyncRuns, Runs
from .samples import AsyncSamples, Samples
from .sweeps import AsyncSweeps, Sweeps
from .webhooks import AsyncWebhookEndpoints, WebhookEndpoints

__all__ = ["AsyncRuns", "AsyncSamples", "AsyncSweeps", "AsyncWebhookEndpoints", "Checkpoints", "Datasets", "Runs",
           "Samples", "Sweeps", "WebhookEndpoints"]
