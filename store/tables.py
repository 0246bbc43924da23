"""Database tables. The database is the source of truth; the broker only carries wake-ups.

Every user-owned row carries its tenant from the start, so isolation is a WHERE clause.
Blobs (checkpoints, images, uploads) live in the database too, so that every api and worker
machine that reaches the database reaches them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; every one stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class LeasedJob:
    """The columns of a job a worker claims and holds by a lease (store/leases.py): runs and sample jobs.

    `status` moves queued -> running (claimed) -> a terminal status; `lease_owner` holds it
    while `lease_expires_at` is in the future; `enqueued_at` is when it was last queued (the
    reconciler re-enqueues a job whose message may be lost)."""

    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # fencing token: bumped by every claim
    enqueued_at: Mapped[datetime | None]


class Run(LeasedJob, Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_runs_tenant_idempotency_key"),
        Index("ix_runs_tenant_created", "tenant", "created_at"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("run"))
    tenant: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]
    sweep_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("sweeps.id"), index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None]
    evaluation: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The caller's own labels (<= 16 string pairs, service/metadata.py); `metadata` is taken by SQLAlchemy.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


class RunEvent(Base):
    """Append-only log of a run: status changes, metrics (type "metrics"), warnings."""

    __tablename__ = "run_events"

    # BIGINT on PostgreSQL (an append-only log outgrows 32 bits); SQLite's INTEGER PRIMARY KEY
    # is the 64-bit rowid already, and only INTEGER gives it autoincrement there.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    """Full training state as safetensors bytes (weights, EMA, optimizer, step, RNG)."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ckpt"))
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SampleJob(LeasedJob, Base):
    """Samples drawn on demand from a run's checkpoint; also holds a run's preview."""

    __tablename__ = "sample_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("smp"))
    tenant: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default="on_demand")  # or "preview"
    params: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    images_npz: Mapped[bytes | None] = mapped_column(LargeBinary)
    grid_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Dataset(Base):
    """An uploaded dataset, stored canonically as an uint8 .npz; one row per content hash."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant", "sha256", name="uq_datasets_tenant_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ds"))
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    info: Mapped[dict[str, Any]]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("swp"))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    base: Mapped[dict[str, Any]]
    vary: Mapped[dict[str, Any]]
    # {"seeds": [...] | None, "max_fcd_increase": float | None}: request settings besides the grid
    options: Mapped[dict[str, Any] | None]
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)  # copied to every run of the sweep
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClassifierCache(Base):
    """The evaluator's classifier, trained once per labelled dataset (safetensors bytes)."""

    __tablename__ = "classifiers"

    dataset_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant's API key, stored as its SHA-256 (the key itself is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("key"))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class WebhookEndpoint(Base):
    """Where a tenant's events are POSTed, signed with `secret` (Standard Webhooks: `whsec_<base64>`).

    The secret is kept as is (the signature needs it) and shown once, in the answer that creates
    it. An endpoint with a `run_id` came with that run's `webhook` and hears only that run."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("whe"))
    tenant: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    """The outbox: an event, written in the transaction of the status change that caused it.

    Its id is the `webhook-id` of every delivery and retry. Events of a run or a sweep have ids
    derived from (subject, type), so each fires once per subject however often the change is seen."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: the delivery log, and the workers' work list (`pending` rows
    whose `next_attempt_at` has come)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("whd"))
    tenant: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhook_events.id", ondelete="CASCADE"),
                                          index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_response_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    event: Mapped[WebhookEvent] = relationship(lazy="joined")  # the log shows each delivery's event type
