"""RunSpec: the job spec a client submits, validated once against the registries.

The api validates requests with it and the worker rebuilds it from the stored JSON, so
both read the same definition. Every choice is a closed set; an unknown value is an
error that lists the allowed ones (pydantic's `literal_error` / our own messages).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models import datasets, networks, regularizers

Prediction = Literal["epsilon", "sample", "v_prediction"]
ScheduleName = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
EstimatorKind = Literal["tweedie", "ddim"]
Weighting = Literal["none", "snr", "min_snr", "alpha_bar"]
Precision = Literal["auto", "fp32", "bf16"]
Compile = Literal["auto", "off"]
SamplerName = Literal["ddpm", "ddim", "dpm_solver"]

MAX_STEPS = 1_000_000
MAX_BATCH = 4096


class FieldError(ValueError):
    """A cross-field error that knows which field is wrong, for the api's problem+json."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Strict(BaseModel):
    """Unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class RegularizerTerm(Strict):
    """One weighted penalty term; `params` is checked against the regularizer's schema."""

    name: str
    weight: FiniteFloat = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        regularizers.check_name(value)
        return value

    @model_validator(mode="after")
    def _known_params(self) -> RegularizerTerm:
        self.params = regularizers.validate_params(self.name, self.params)
        return self


RegularizerInput = str | RegularizerTerm | list[RegularizerTerm]
"""What a request may send as `regularizer` (the JSON schema says so, for generated clients); the
field itself is always the list."""


def regularizer_terms(value: Any) -> Any:
    """`"tv"` and `{"name": "tv"}` both mean `[{"name": "tv", "weight": 1}]`."""
    if isinstance(value, str):
        return [{"name": value}]
    if isinstance(value, dict):
        return [value]
    return value


class ModelSpec(Strict):
    preset: str = "unet-xs"
    prediction: Prediction = "epsilon"
    schedule: ScheduleName = "linear"
    timesteps: int = Field(1000, ge=10, le=4000)
    min_snr_gamma: FiniteFloat | None = Field(
        None, gt=0, description="min-SNR-gamma weighting of the diffusion loss (None: off)"
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in networks.PRESETS:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(networks.PRESETS)}")
        return value


class EstimatorSpec(Strict):
    """How `x0_hat`, the image the penalty sees, is computed from `x_t`."""

    kind: EstimatorKind = "tweedie"
    steps: int = Field(4, ge=1, le=50, description="ddim: network calls from x_t down to 0")
    grad_steps: int = Field(1, ge=1, le=50, description="ddim: backprop through the last k calls")
    random_cut: bool = Field(False, description="ddim: draw the truncation point at random")
    checkpointing: bool = Field(False, description="ddim: gradient checkpointing per call")

    @model_validator(mode="after")
    def _grad_within_steps(self) -> EstimatorSpec:
        if self.grad_steps > self.steps:
            raise FieldError("estimator.grad_steps", f"grad_steps ({self.grad_steps}) must be <= steps ({self.steps})")
        return self


class RegScheduleSpec(Strict):
    """Where in t and how strongly the penalty applies (see models/estimators.py)."""

    warmup_steps: int = Field(0, ge=0, description="lambda ramps linearly from 0 over these steps")
    every: int = Field(
        1,
        ge=1,
        description="apply the penalty on one step in N, times N. This keeps the expected loss, not the"
        " effect: under AdamW with clipping the penalty's drift is about 0.3-0.6x that of every=1 for"
        " N=4..10 (bench/every_adamw.py); use it to save compute, and compare runs at equal N",
    )
    t_min: int = Field(0, ge=0)
    t_max: int = Field(
        200,
        ge=1,
        description="penalty only for t < t_max: x0_hat is blurry and its error grows as 1/sqrt(SNR)",
    )
    weighting: Weighting = Field(
        "none", description="w(t) on the penalty; snr is unbounded near t=0 (models/objective.py)"
    )
    gamma: FiniteFloat = Field(5.0, gt=0, description="min_snr: the SNR cap")

    @model_validator(mode="after")
    def _ordered(self) -> RegScheduleSpec:
        if self.t_min >= self.t_max:
            raise FieldError("reg_schedule.t_min", f"t_min ({self.t_min}) must be < t_max ({self.t_max})")
        return self


class TrainSpec(Strict):
    steps: int = Field(2000, ge=1, le=MAX_STEPS)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    lr: FiniteFloat = Field(
        1e-3, gt=0, le=1,
        description="AdamW's learning rate. 1e-3 reaches a given FCD in less than half the time of the diffusers"
        " example's 2e-4 on the small presets (bench/time_to_quality.py)",
    )
    ema_decay: FiniteFloat = Field(
        0.999,
        ge=0,
        lt=1,
        description="the EMA's decay after warm-up: decay(k) = min(ema_decay, 1 - (1 + k/150)^-3), a horizon"
        " 1/(1 - decay) that grows with the run (about 80 steps at step 500, 450 at step 1,000) and reaches"
        " 1/(1 - ema_decay) at step 1,350 for 0.999 (logged as ema_horizon)",
    )
    grad_clip: FiniteFloat = Field(1.0, gt=0)
    precision: Precision = Field(
        "auto",
        description="auto: fp32 on the CPU, and on CUDA what measured fastest for the preset: fp32 for unet-xs"
        " and unet-s (launch-bound: bf16 autocast ran 0.83x the fp32 anchor loop on an H200, fp32 1.09x),"
        " bf16 autocast for unet-m",
    )
    compile: Compile = Field(
        "auto",
        description="auto: on CUDA the whole training step (forward, backward, clipping, AdamW, EMA) is"
        " captured once as a CUDA graph and replayed (capture time logged as compile_seconds); off, and"
        " always on the CPU: eager",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(
        0,
        ge=0,
        description="0: off. Otherwise hold out a fixed 5% of the dataset (seeded) and log val_loss, the"
        " diffusion loss on it at fixed noise and t, every val_every steps (each log carries the latest)",
    )


class PreviewSpec(Strict):
    """The sample grid made from the EMA weights at the end of a run."""

    n: int = Field(16, ge=1, le=256)
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class GuidanceSpec(Strict):
    """Regularizer-guided sampling, the training-free baseline (models/samplers.py): at each sampler
    step with t < t_max, x_t <- x_t - scale * grad_{x_t} L'(x0_hat(x_t, t)), x0_hat from the model's
    own output (universal / reconstruction guidance). Compare it with the penalty during training."""

    regularizer: list[RegularizerTerm] = Field(description="same shape as RunSpec.regularizer")
    scale: FiniteFloat = Field(ge=0, description="step size on x_t per sampler step; 0 reproduces unguided samples")
    t_max: int = Field(1000, ge=1, le=4000, description="guide only the steps with t < t_max")

    @field_validator("regularizer", mode="before", json_schema_input_type=RegularizerInput)
    @classmethod
    def _accept_shorthand(cls, value: Any) -> Any:
        return regularizer_terms(value)


class EvaluationSpec(Strict):
    """The end-of-run evaluation (models/evaluation.py): DDIM samples from the EMA weights, scored
    against the real set. FCD is biased upwards for small N, so compare runs at equal n_samples."""

    n_samples: int | None = Field(
        None, ge=0, le=10_000, description="samples to score; 0: off; null: the server's REGDIFF_EVAL_SAMPLES"
    )
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps per sample")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class RunSpec(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dataset: str = "digits"
    regularizer: list[RegularizerTerm] = Field(
        default_factory=lambda: [RegularizerTerm(name="tv")],
        description='the penalty: a name ("tv"), one term {"name", "weight", "params"}, or a list of terms (summed)',
    )
    lambda_: FiniteFloat = Field(0.1, alias="lambda", ge=0, le=1e6)
    model: ModelSpec = Field(default_factory=ModelSpec)
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec)
    reg_schedule: RegScheduleSpec = Field(default_factory=RegScheduleSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    preview: PreviewSpec = Field(default_factory=PreviewSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    checkpoint_every: int | None = Field(500, ge=1)
    init_from: str | None = Field(
        None,
        description="a checkpoint id to fine-tune from; its EMA (and EMA warm-up position) carries over",
    )
    init_from_weights: Literal["ema", "raw"] = Field(
        "ema", description="init_from: start the trained weights from the checkpoint's EMA or its raw weights"
    )
    time_limit_seconds: FiniteFloat | None = Field(
        None, gt=0, description="fail the run past this much training time (capped by the server's limit)"
    )

    @field_validator("regularizer", mode="before", json_schema_input_type=RegularizerInput)
    @classmethod
    def _accept_shorthand(cls, value: Any) -> Any:
        return regularizer_terms(value)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value.startswith("upload:") or value in datasets.BUILTIN:
            return value
        allowed = ", ".join([*datasets.BUILTIN, "upload:<id>"])
        raise ValueError(f"unknown dataset {value!r}; allowed: {allowed}")

    @model_validator(mode="after")
    def _fits(self) -> RunSpec:
        if self.reg_schedule.t_max > self.model.timesteps:
            raise FieldError(
                "reg_schedule.t_max",
                f"reg_schedule.t_max ({self.reg_schedule.t_max}) must be <= model.timesteps"
                f" ({self.model.timesteps})"
            )
        info = datasets.BUILTIN.get(self.dataset)
        if info is not None:
            try:
                networks.check_fits(self.model.preset, info.image_size)
            except ValueError as exc:
                raise FieldError("model.preset", str(exc)) from None
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
