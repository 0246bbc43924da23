"""Typed results: frozen dataclasses over the server's JSON.

Only the fields the contract names are attributes; the whole object stays in `.raw`, so
a newer server's extra fields are never lost and an older client keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, kw_only=True)
class Model:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Known, non-null fields become attributes (nulls keep the defaults); all of it stays in `.raw`."""
        known = {f.name for f in fields(cls)} - {"raw"}
        return cls(raw=data, **{k: v for k, v in data.items() if k in known and v is not None})


@dataclass(frozen=True, kw_only=True)
class Run(Model):
    id: str
    status: str
    spec: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    total_steps: int | None = None
    progress: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the latest logged values
    error: str | None = None
    attempts: int = 0
    evaluation: dict[str, Any] | None = None
    urls: dict[str, str] = field(default_factory=dict)
    sweep_id: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None  # only from `create` with a webhook: its endpoint and secret, shown once

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, kw_only=True)
class Event(Model):
    id: str | int
    type: str = "message"
    level: str | None = None
    message: str | None = None
    data: Any = None
    created_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Model):
    id: str
    run_id: str | None = None
    step: int | None = None
    size: int | None = None
    is_final: bool = False
    created_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class SampleJob(Model):
    id: str
    status: str
    run_id: str | None = None
    checkpoint_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: str | None = None
    finished_at: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, kw_only=True)
class Dataset(Model):
    id: str
    name: str | None = None
    created_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class Sweep(Model):
    id: str
    status: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    vary: dict[str, list[Any]] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    created_at: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class WebhookEndpoint(Model):
    id: str
    url: str
    events: list[str] = field(default_factory=list)
    description: str | None = None
    run_id: str | None = None  # set for a run's own webhook
    secret: str | None = None  # only in what `create` returns: keep it, it is not shown again
    created_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookDelivery(Model):
    id: str
    event_id: str  # the webhook-id header, the same on every try
    type: str
    status: str  # pending | succeeded | failed
    attempts: int = 0
    last_response_code: int | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None
    created_at: str | None = None
    finished_at: str | None = None


Series = dict[str, list[tuple[int, float]]]
