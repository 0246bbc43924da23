"""All settings in one place, read from REGDIFF_* environment variables.

The default is the embedded mode: SQLite database and a SQLite-backed Celery broker under
REGDIFF_HOME, no server needed. Production points REGDIFF_DATABASE_URL at PostgreSQL and
REGDIFF_BROKER_URL at Redis; the code path is the same.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; anything else (0.0.0.0, a LAN address, a name) is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGDIFF_", extra="ignore")

    home: Path = Field(Path("./var"), description="folder of the embedded database, broker and caches")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in REGDIFF_HOME")
    broker_url: str = Field("", description="Celery broker URL; default: kombu SQLAlchemy transport on a SQLite file")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = Field(None, description="torchvision datasets (mnist, fashion-mnist, cifar10)")
    allow_download: bool = Field(False, description="let torchvision download missing datasets")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    queue: str = Field("gpu", description="Celery queue for training; sample jobs use QUEUE-samples")
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="auto: API keys required unless the api listens on a loopback address")
    allow_insecure: bool = Field(
        False, description="let REGDIFF_AUTH=off serve a non-loopback REGDIFF_HOST (anyone reaching it is in)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser origins allowed by CORS, comma-separated; empty: CORS off")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names accepted besides loopback names, REGDIFF_HOST and the address a"
        " connection arrived on, comma-separated ('*.example.com' for subdomains, '*' for any); any other Host is a 400")

    # Limits and quotas (security): a server may tighten RunSpec's own bounds, never widen them.
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(64 << 20, ge=1024, description="largest POST /v1/datasets body (multipart)")
    max_train_steps: int = Field(200_000, ge=1, description="largest train.steps a run may ask for")
    max_batch_size: int = Field(1024, ge=1, description="largest train.batch_size")
    max_image_size: int = Field(64, ge=8, description="largest image side (pixels) of a run's dataset")
    max_queued_runs: int = Field(
        100, ge=1, description="queued runs per tenant; POST /v1/runs beyond it is a 429 with Retry-After")
    max_running_runs: int = Field(
        4, ge=1, description="running runs per tenant; a worker leaves further runs queued until one ends")
    rate_limit_per_minute: float = Field(
        600, ge=0, description="requests per minute per API key (and per client address without a valid key),"
        " shared by every api process through REGDIFF_RATE_LIMIT_STORAGE; 0: off")
    rate_limit_burst: int = Field(60, ge=1, description="requests a key may send at once, then the rate applies")
    rate_limit_storage: str = Field(
        "", description="`limits` storage URI (redis://host:6379/1, memory://); default: the broker when it is"
        " Redis (shared by every api process), else memory (one process: the embedded mode)")

    lease_seconds: float = Field(30.0, gt=0, description="a running job's lease; renewed every third of it")
    max_attempts: int = Field(
        3, ge=1, description="claims of one job that end without progress (a crash) before it fails; a warm"
        " shutdown, a database outage or a claim that got past its checkpoint spends none")
    db_retry_seconds: float = Field(
        60.0, ge=0, description="a worker retries a database write this long (backoff) before it gives the run back")
    requeue_after_seconds: float = Field(60.0, gt=0, description="re-enqueue runs queued longer than this")
    reconcile_every_seconds: float = Field(10.0, gt=0)
    run_time_limit_seconds: float = Field(24 * 3600, gt=0)
    log_flush_seconds: float = Field(0.5, ge=0, description="at most one metrics write per this interval")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept per run besides the final one")
    keep_intermediate_checkpoints: bool = Field(
        False, description="keep a run's intermediate checkpoints once it ends; by default only the final one and"
        " the newest one are kept (what sampling, init_from and a resume use)")
    tenant_byte_quota: int = Field(
        50 << 30, ge=0, description="bytes a tenant may store (checkpoints, sample arrays and images, uploads);"
        " beyond it new runs, sweeps, sample jobs and uploads are a 429 (413 for an upload larger alone); 0: no quota")
    min_checkpoint_every: int = Field(
        5, ge=1, description="smallest checkpoint_every a run may ask for (each checkpoint is the full training"
        " state, up to hundreds of MiB)")
    max_sample_n: int = Field(256, ge=1)
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="a worker serves its Prometheus gauges on this port; unset: off")
    worker_metrics_host: str = Field("127.0.0.1", description="address of the worker's metrics port")
    max_active_samples: int = Field(
        20, ge=1, description="queued or running sample jobs per tenant; beyond it POST .../samples is a 429")
    eval_samples: int = Field(
        1000, ge=0, description="samples drawn for the end-of-run evaluation (0: off); at 1000 the real-vs-real FCD"
        " (noise floor) is a few percent of a lambda=0 run's FCD on digits (bench/eval_noise_floor.py)")
    eval_classifier_steps: int = Field(
        500, ge=1, description="training steps of the evaluation classifier (trained once per dataset, cached)")

    # Datasets and sweeps. The upload's byte limit is max_upload_bytes above (one knob for the
    # body-size middleware and the handler); the image side limit is max_image_size.
    max_upload_images: int = Field(100_000, ge=1, description="most images in one dataset upload")
    max_upload_uncompressed_bytes: int = Field(
        256 << 20, ge=1, description="an upload's archive members together, decompressed (zip bombs)")
    max_concurrent_uploads: int = Field(
        2, ge=1, description="uploads parsed at once per api process (each up to max_upload_bytes +"
        " 4 x max_upload_uncompressed_bytes + 32 MiB of memory); more answer 503 uploads-busy")
    upload_channels: tuple[int, ...] = Field((1, 3), description="channel counts an upload may have")
    max_sweep_points: int = Field(32, ge=1, description="most runs one sweep may create (points x seeds + baselines)")
    max_sweep_seeds: int = Field(8, ge=1, description="most training seeds one sweep may ask for (`seeds`)")
    sweep_batching: Literal["auto", "on", "off"] = Field(
        "auto", description="train a sweep's waiting points that share dataset, model, batch size, lr, precision"
        " and compile in one worker as one stacked model (models/stacked.py), each still its own run. auto: on"
        " CUDA only (on 2 CPU cores an 8-point stack measured 0.93x the images/s of separate runs); on:"
        " everywhere; off: never")
    sweep_batch_max: int = Field(16, ge=2, description="most points one stacked model trains together")

    # Webhooks (worker/webhooks.py delivers them)
    webhook_allow_private: bool = Field(
        False, description="let webhook URLs resolve to loopback, private, link-local or reserved addresses"
        " (a receiver on this machine or the LAN); off, such a URL is a 422 and is refused again at delivery")
    webhook_max_attempts: int = Field(8, ge=1, description="tries of one delivery before it is marked failed")
    webhook_backoff_seconds: float = Field(
        30.0, gt=0, description="wait before the first retry; doubled each time, up to REGDIFF_WEBHOOK_BACKOFF_MAX_SECONDS")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="longest wait between two tries")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="a receiver that takes longer has failed this try")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="how often each worker looks for due deliveries")
    max_webhook_endpoints: int = Field(
        20, ge=0, description="webhook endpoints a tenant may have, not counting runs' own; 0: no limit"
    )

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        """Outside loopback, switching authentication off needs an explicit, named override."""
        if self.auth == "off" and not is_loopback(self.host) and not self.allow_insecure:
            raise ValueError(
                f"REGDIFF_AUTH=off with REGDIFF_HOST={self.host} would let anyone who reaches this address"
                " use the api without a key; use REGDIFF_AUTH=auto or required (create keys with"
                " `regdiff-admin keys create --tenant NAME`), or set REGDIFF_ALLOW_INSECURE=true"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Keys required: REGDIFF_AUTH=required, or auto with a non-loopback REGDIFF_HOST."""
        if self.auth != "auto":
            return self.auth == "required"
        return not is_loopback(self.host)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'regdiff.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_rate_limit_storage(self) -> str:
        if self.rate_limit_storage:
            return self.rate_limit_storage
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return "memory://"

    @property
    def sample_queue(self) -> str:
        """Sample jobs' own queue, consumed by the same workers: a burst of them cannot starve training."""
        return f"{self.queue}-samples"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.home / "data"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings
