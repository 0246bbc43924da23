"""Response shapes (the request shape is models.spec.RunSpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.spec import FiniteFloat, SamplerName, Strict
from store.tables import Checkpoint, Run, RunEvent, SampleJob, as_utc

RunStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


def _ts(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment else None


class RunUrls(BaseModel):
    self: str
    cancel: str
    events: str
    samples_png: str


class RunPublic(BaseModel):
    id: str
    object: Literal["run"] = "run"
    status: RunStatus
    spec: dict[str, Any]
    sweep_id: str | None
    step: int
    total_steps: int
    progress: float
    metrics: dict[str, float] | None
    evaluation: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    urls: RunUrls

    @classmethod
    def of(cls, run: Run) -> RunPublic:
        base = f"/v1/runs/{run.id}"
        return cls(
            id=run.id, status=run.status, spec=run.spec, sweep_id=run.sweep_id, step=run.step,
            total_steps=run.total_steps, progress=round(run.step / max(run.total_steps, 1), 4),
            metrics=run.metrics, evaluation=run.evaluation, error=run.error, attempts=run.attempts,
            created_at=_ts(run.created_at), started_at=_ts(run.started_at), finished_at=_ts(run.finished_at),
            urls=RunUrls(self=base, cancel=f"{base}/cancel", events=f"{base}/events",
                         samples_png=f"{base}/samples.png"),
        )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    has_more: bool
    next_cursor: str | None


class EventPublic(BaseModel):
    id: int
    type: str
    level: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(cls, event: RunEvent) -> EventPublic:
        return cls(id=event.id, type=event.type, level=event.level, message=event.message, data=event.data,
                   created_at=_ts(event.created_at))


class EventsPublic(BaseModel):
    data: list[EventPublic]
    has_more: bool


class MetricsPublic(BaseModel):
    series: dict[str, list[list[float]]]


class CheckpointPublic(BaseModel):
    id: str
    run_id: str
    step: int
    size: int
    is_final: bool
    created_at: datetime
    url: str

    @classmethod
    def of(cls, ckpt: Checkpoint) -> CheckpointPublic:
        return cls(id=ckpt.id, run_id=ckpt.run_id, step=ckpt.step, size=ckpt.size, is_final=ckpt.is_final,
                   created_at=_ts(ckpt.created_at), url=f"/v1/checkpoints/{ckpt.id}")


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


class SampleRequest(Strict):
    n: int = Field(16, ge=1, description="number of images (capped by REGDIFF_MAX_SAMPLE_N)")
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1, le=1000)
    eta: FiniteFloat = Field(0.0, ge=0, le=1, description="ddim: 0 deterministic, 1 DDPM-like")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    checkpoint: str | None = Field(None, description="a checkpoint id of this run; default: the latest")


class SamplePublic(BaseModel):
    id: str
    object: Literal["sample"] = "sample"
    kind: str
    status: str
    run_id: str
    checkpoint_id: str | None
    params: dict[str, Any]
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    urls: dict[str, str]

    @classmethod
    def of(cls, job: SampleJob) -> SamplePublic:
        base = f"/v1/samples/{job.id}"
        return cls(id=job.id, kind=job.kind, status=job.status, run_id=job.run_id,
                   checkpoint_id=job.checkpoint_id, params=job.params, error=job.error,
                   created_at=_ts(job.created_at), finished_at=_ts(job.finished_at),
                   urls={"self": base, "grid_png": f"{base}/grid.png", "npz": f"{base}/samples.npz"})
