"""All settings in one place, read from REGDIFF_* environment variables.

The default is the embedded mode: SQLite database and a SQLite-backed Celery broker under
REGDIFF_HOME, no server needed. Production points REGDIFF_DATABASE_URL at PostgreSQL and
REGDIFF_BROKER_URL at Redis; the code path is the same.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    queue: str = Field("gpu", description="Celery queue for training and sampling")
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="auto: API keys required unless the api listens on a loopback address")

    lease_seconds: float = Field(30.0, gt=0, description="a running job's lease; renewed every third of it")
    max_attempts: int = Field(3, ge=1, description="claims of one run before it fails")
    requeue_after_seconds: float = Field(60.0, gt=0, description="re-enqueue runs queued longer than this")
    reconcile_every_seconds: float = Field(10.0, gt=0)
    run_time_limit_seconds: float = Field(24 * 3600, gt=0)
    log_flush_seconds: float = Field(0.5, ge=0, description="at most one metrics write per this interval")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept per run besides the final one")
    max_sample_n: int = Field(256, ge=1)
    eval_samples: int = Field(64, ge=0, description="samples drawn for the end-of-run evaluation (0: off)")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'regdiff.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

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
