"""Response shapes (the request shape is models.spec.RunSpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.spec import FiniteFloat, GuidanceSpec, RunSpec, SamplerName, Strict
from store.tables import (
    Checkpoint,
    Dataset,
    Run,
    RunEvent,
    SampleJob,
    Sweep,
    WebhookDelivery,
    WebhookEndpoint,
    as_utc,
)

RunStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


def _ts(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment else None


METADATA = ("your own labels: at most 16 string pairs, keys of 1-40 characters from A-Z a-z 0-9 _ . -,"
            " values of at most 500 characters; lists filter on them with ?metadata[key]=value")


class RunWebhook(Strict):
    url: str = Field(description="http(s), at most 2,048 characters, resolving to public addresses")
    events: list[str] | None = Field(
        None, description="any of run.running, run.succeeded, run.failed, run.cancelled, samples.succeeded;"
        " default: the four run.* events")


class RunCreate(RunSpec):
    """POST /v1/runs: a RunSpec, plus the caller's metadata and an optional webhook for this run."""

    metadata: dict[str, str] | None = Field(None, description=METADATA)
    webhook: RunWebhook | None = Field(
        None, description="this run's own webhook endpoint; its signing secret is in the 201 answer only")

    def to_json(self) -> dict[str, Any]:
        """The spec alone, as the run stores it."""
        return self.model_dump(mode="json", by_alias=True, exclude={"metadata", "webhook"})


class RunUpdate(Strict):
    """PATCH /v1/runs/{id}: a JSON merge patch (RFC 7396)."""

    metadata: dict[str, str | None] | None = Field(
        None, description="pairs to set; a key set to null is removed; the other keys stay")


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
    metadata: dict[str, str] = Field(default_factory=dict, description=METADATA)
    webhook: WebhookEndpointCreated | None = Field(
        None, description="only in the 201 of a POST /v1/runs with a `webhook`: the run's endpoint and its"
        " secret, shown this once (the endpoint is listed in /v1/webhook_endpoints with this run's run_id)")

    @classmethod
    def of(cls, run: Run, webhook: WebhookEndpoint | None = None) -> RunPublic:
        base = f"/v1/runs/{run.id}"
        return cls(
            metadata=run.meta or {}, webhook=WebhookEndpointCreated.of(webhook) if webhook else None,
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
    guidance: GuidanceSpec | None = Field(None, description="regularizer-guided sampling (models/samplers.py)")


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


# ---- datasets ----------------------------------------------------------------------------------


class DatasetPublic(BaseModel):
    """A built-in set (id = its name) or a tenant's upload (id = ds_...); `dataset` is what a
    RunSpec names it by ("digits", "upload:ds_...")."""

    id: str
    object: Literal["dataset"] = "dataset"
    kind: Literal["builtin", "upload"]
    name: str
    dataset: str
    image_size: int
    channels: int
    count: int
    num_classes: int | None
    labelled: bool
    available: bool = Field(description="built-ins read from REGDIFF_DATA_DIR: whether the files are there")
    note: str | None = Field(None, description="what to do when it is not available; a built-in's description")
    sha256: str | None = Field(None, description="uploads: hash of the canonical stored form (deduplication)")
    size_bytes: int | None = None
    created_at: datetime | None = None
    url: str

    @classmethod
    def of_upload(cls, ds: Dataset, size_bytes: int | None = None) -> DatasetPublic:
        info = ds.info
        return cls(id=ds.id, kind="upload", name=ds.name, dataset=f"upload:{ds.id}", image_size=info["image_size"],
                   channels=info["channels"], count=info["count"], num_classes=info.get("num_classes"),
                   labelled=info.get("num_classes") is not None, available=True, sha256=ds.sha256,
                   size_bytes=size_bytes if size_bytes is not None else info.get("size_bytes"),
                   created_at=_ts(ds.created_at), url=f"/v1/datasets/{ds.id}")


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]


# ---- sweeps ------------------------------------------------------------------------------------


class SweepCreate(Strict):
    base: dict[str, Any] = Field(default_factory=dict, description="a RunSpec: what every run of the sweep shares")
    vary: dict[str, list[Any]] = Field(
        description='dotted paths into the spec and their values; several keys make a grid,'
        ' e.g. {"lambda": [0, 0.1, 1], "estimator.kind": ["tweedie", "ddim"]}'
    )
    seeds: list[int] | None = Field(
        None, description="training seeds: every point is trained once per seed (train.seed set), and the report"
        " takes the mean over seeds with a Student t interval over them; at most REGDIFF_MAX_SWEEP_SEEDS. The lambda=0"
        " baseline is added per seed when no point of `vary` is one")
    max_fcd_increase: FiniteFloat | None = Field(
        None, ge=0, description="the best setting may raise FCD by up to this much (point estimate) instead of"
        " keeping quality within its interval")
    metadata: dict[str, str] | None = Field(None, description=METADATA + "; copied to every run of the sweep")

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 0 <= s <= 2**31 - 1 for s in value):
            raise ValueError("every seed must be between 0 and 2147483647")
        return value


class SweepRunPublic(BaseModel):
    id: str
    status: RunStatus
    values: dict[str, Any]
    step: int
    total_steps: int
    progress: float
    error: str | None
    url: str
    seed: int | None = Field(None, description="its train.seed")
    baseline: bool = Field(False, description="a lambda=0 run: the baseline the other points are compared with")

    @classmethod
    def of(cls, run: Run, values: dict[str, Any]) -> SweepRunPublic:
        return cls(id=run.id, status=run.status, values=values, step=run.step, total_steps=run.total_steps,
                   progress=round(run.step / max(run.total_steps, 1), 4), error=run.error, url=f"/v1/runs/{run.id}",
                   seed=(run.spec.get("train") or {}).get("seed"), baseline=not run.spec.get("lambda"))


SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "partially-failed"]


class SweepPublic(BaseModel):
    id: str
    object: Literal["sweep"] = "sweep"
    status: SweepStatus
    base: dict[str, Any]
    vary: dict[str, list[Any]]
    points: int
    seeds: list[int] | None = Field(None, description="the training seeds asked for (null: the base's train.seed)")
    max_fcd_increase: float | None = None
    counts: dict[str, int]
    runs: list[SweepRunPublic]
    created_at: datetime
    urls: dict[str, str]
    metadata: dict[str, str] = Field(default_factory=dict, description=METADATA)

    @classmethod
    def of(cls, sweep: Sweep, runs: list[Run], status: str, values: list[dict[str, Any]]) -> SweepPublic:
        base = f"/v1/sweeps/{sweep.id}"
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        options = sweep.options or {}
        return cls(id=sweep.id, status=status, base=sweep.base, vary=sweep.vary, points=len(runs), counts=counts,
                   metadata=sweep.meta or {},
                   seeds=options.get("seeds"), max_fcd_increase=options.get("max_fcd_increase"),
                   runs=[SweepRunPublic.of(r, v) for r, v in zip(runs, values)], created_at=_ts(sweep.created_at),
                   urls={"self": base, "cancel": f"{base}/cancel", "report": f"{base}/report",
                         "report_png": f"{base}/report.png", "runs": f"/v1/runs?sweep_id={sweep.id}"})


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    has_more: bool
    next_cursor: str | None


class SweepReportRow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    run_id: str
    status: RunStatus
    values: dict[str, Any]
    lambda_: float = Field(alias="lambda")
    fcd: float | None = Field(description="Frechet classifier distance to the real set (lower is closer)")
    confidence: float | None = Field(description="the classifier's mean top probability on the samples")
    classifier_score: float | None
    penalty_samples: float | None = Field(description="the run's weighted regularizer on its samples")
    penalty_real: float | None = Field(description="the same on real images")
    n_samples: int | None
    seconds: float | None = Field(description="wall time from start to finish (training, preview, evaluation)")
    error: str | None
    seed: int | None = None
    baseline: bool = False




# ---- comparisons (models/verdict.py computes them; service/compare.py chooses the seeds) ---------


class Estimate(BaseModel):
    value: float | None
    ci: list[float] | None = Field(description="95% interval [lo, hi]")


class PenaltyComparison(BaseModel):
    run: Estimate = Field(description="the penalty's mean on the run's samples (over its seeds)")
    baseline: Estimate
    relative_change: Estimate = Field(description="run / baseline - 1")
    change: Literal["reduced", "no_significant_change", "increased"]
    real: float | None = Field(description="the same penalty on real images")
    terms: list[dict[str, Any]] | None = Field(None, description="the run's own penalty: its regularizer terms")


class FcdComparison(BaseModel):
    run: Estimate
    baseline: Estimate
    difference: Estimate = Field(description="run - baseline")
    quality: Literal["kept", "degraded", "improved"]
    noise_floor: float | None = Field(description="real-vs-real FCD at the same N: what a perfect generator scores")


class Verdict(BaseModel):
    penalty: Literal["reduced", "no_significant_change", "increased"] | None
    quality: Literal["kept", "degraded", "improved"] | None
    sentence: str


class SeedVarianceUsed(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["seeds_t", "calibration", "default"] = Field(
        description="seeds_t: several seeds on both sides, their spread measured on them (Welch's t); otherwise a"
        " between-seed relative sd,"
        " calibrated on the tenant's lambda=0 runs of the baseline's recipe (`runs`) or the documented default")
    penalty_rsd: float | None = None
    fcd_rsd: float | None = None
    source: str | None = None
    runs: list[str] | None = None
    applied_to: list[str] | None = None


class ComparisonBody(BaseModel):
    n_samples: dict[str, list[int | None]]
    seeds: dict[str, int]
    runs: dict[str, list[str]] = Field(description="the run ids on each side (several: seeds of one point)")
    seed_variance: SeedVarianceUsed
    penalty: PenaltyComparison | None = Field(description="the run's own penalty")
    penalties: dict[str, PenaltyComparison | None] = Field(description="every registered penalty, default params")
    fcd: FcdComparison | None
    verdict: Verdict


class RunComparison(ComparisonBody):
    object: Literal["run_comparison"] = "run_comparison"
    run_id: str
    baseline_id: str
    dataset: str


# ---- sweep reports -------------------------------------------------------------------------------


class SweepPoint(BaseModel):
    """One grid point over its seeds, against the lambda=0 baseline (service/sweep_verdicts.py)."""

    label: str
    values: dict[str, Any]
    baseline: bool
    run_ids: list[str]
    seeds: list[int | None]
    evaluated: int = Field(description="how many of its runs are evaluated (the statistics use these)")
    penalty: Estimate | None = Field(description="the run's own penalty on samples: mean over seeds, 95% interval")
    fcd: Estimate | None
    relative_change: Estimate | None = Field(description="penalty against the baseline: run / baseline - 1")
    fcd_difference: Estimate | None = Field(description="FCD minus the baseline's")
    verdict: Verdict | None
    seed_variance: SeedVarianceUsed | None
    compared_with: str | None = Field(description="the baseline point's label")


class SweepReport(BaseModel):
    object: Literal["sweep_report"] = "sweep_report"
    sweep_id: str
    status: SweepStatus
    keys: list[str]
    seeds: list[int] | None = None
    rows: list[SweepReportRow]
    reference: dict[str, float | None] = Field(
        description="real data: the penalty, and the classifier's confidence, score and held-out accuracy")
    points: list[SweepPoint]
    best: str | None = Field(description="the label of the recommended point; null when no setting helped")
    statement: str = Field(description="the recommendation, or plainly that no setting helped")
    pareto: list[str] = Field(description="labels of the points on the Pareto front (penalty on samples vs FCD)")
    max_fcd_increase: float | None = None
    markdown: str


# ---- webhooks ------------------------------------------------------------------------------------


class WebhookEndpointCreate(Strict):
    url: str = Field(description="http(s), at most 2,048 characters; every address its host resolves to must be"
                     " public (not loopback, private, link-local, multicast or reserved) unless the server sets"
                     " REGDIFF_WEBHOOK_ALLOW_PRIVATE=true")
    events: list[str] | None = Field(
        None, description="any of run.running, run.succeeded, run.failed, run.cancelled, sweep.finished,"
        " samples.succeeded; default: all of them")
    description: str | None = Field(None, max_length=500)


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str | None
    run_id: str | None = Field(description="set when the endpoint came with a run's `webhook`: it hears that run only")
    created_at: datetime
    urls: dict[str, str]

    @classmethod
    def fields_of(cls, endpoint: WebhookEndpoint) -> dict[str, Any]:
        base = f"/v1/webhook_endpoints/{endpoint.id}"
        return dict(id=endpoint.id, url=endpoint.url, events=endpoint.events, description=endpoint.description,
                    run_id=endpoint.run_id, created_at=_ts(endpoint.created_at),
                    urls={"self": base, "deliveries": f"{base}/deliveries"})

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(**cls.fields_of(endpoint))


class WebhookEndpointCreated(WebhookEndpointPublic):
    """The answer that creates an endpoint: the only one that carries its secret."""

    secret: str = Field(description="whsec_<base64>: the HMAC-SHA256 key of the webhook-signature header (Standard"
                        " Webhooks); shown this once, keep it")

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointCreated:
        return cls(**cls.fields_of(endpoint), secret=endpoint.secret)


class WebhookEndpointsPublic(BaseModel):
    data: list[WebhookEndpointPublic]
    has_more: bool
    next_cursor: str | None


class WebhookDeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str = Field(description="the webhook-id header: the same on every try of this event")
    type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_response_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> WebhookDeliveryPublic:
        return cls(id=delivery.id, event_id=delivery.event_id, type=delivery.event.type, status=delivery.status,
                   attempts=delivery.attempts, last_response_code=delivery.last_response_code,
                   last_error=delivery.last_error,
                   next_attempt_at=_ts(delivery.next_attempt_at) if delivery.status == "pending" else None,
                   created_at=_ts(delivery.created_at), finished_at=_ts(delivery.finished_at))


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    has_more: bool
    next_cursor: str | None


# ---- catalog and health ------------------------------------------------------------------------


class RegularizerInfo(BaseModel):
    """A penalty a RunSpec's `regularizer` may name (models/regularizers.py, or a plug-in)."""

    name: str
    doc: str
    params_schema: dict[str, Any] = Field(description="the JSON schema of a term's `params`")


class RegularizersPublic(BaseModel):
    data: list[RegularizerInfo]


class PresetInfo(BaseModel):
    """A network preset `model.preset` may name, with the image sizes it fits."""

    name: str
    min_size: int
    max_size: int
    size_multiple: int = Field(description="the image size must be a multiple of this")
    parameters: int = Field(description="trainable parameters for one channel at max_size")
    doc: str


class PresetsPublic(BaseModel):
    data: list[PresetInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description='per dependency ("database", "broker"): "ok" or "error: <kind>"')


RunPublic.model_rebuild()  # its `webhook` is declared above WebhookEndpointCreated
