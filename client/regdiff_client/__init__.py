"""regdiff-client: the Python SDK for the regdiff training service.

from regdiff_client import Client
client = Client()                      # REGDIFF_URL, REGDIFF_API_KEY
run = client.runs.create(dataset="digits", regularizer="tv", lambda_=0.1)
client.runs.wait(run.id)
client.runs.save_grid(run.id, "grid.png")

webhooks.verify(secret, headers, body) checks a delivery's signature (regdiff_client/webhooks.py).
"""

from . import webhooks
from ._client import AsyncClient, Client
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    JobFailedError,
    NotFoundError,
    RateLimitError,
    RegdiffError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from ._version import __version__
from .types import Checkpoint, Dataset, Event, Run, SampleJob, Sweep, WebhookDelivery, WebhookEndpoint
from .webhooks import WebhookVerificationError

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "Client",
    "ConflictError",
    "Dataset",
    "Event",
    "InternalServerError",
    "JobFailedError",
    "NotFoundError",
    "RateLimitError",
    "RegdiffError",
    "Run",
    "SampleJob",
    "Sweep",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookVerificationError",
    "__version__",
    "webhooks",
]
