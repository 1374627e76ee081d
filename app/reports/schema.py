"""The evaluation report (`report.json`) and the job summary (`jobs.metrics`) as typed models.

One source of truth for both sides: the worker fills these models, `/v1/compare`, the HTML page
and the job summary read them by attribute, and `openapi/report.schema.json` (generated from
`Report`) gives clients the same types. Bump REPORT_VERSION when a field changes meaning or
goes away; adding an optional field keeps it.

Serialised with `exclude_unset=True`: a field the worker did not measure is absent, not null,
exactly as in the reports written before these models existed (their shape is unchanged).
A few maps keep free-form keys where the key itself is data (a task name, a method's own stage
notes, a batch size in a field name); their values are still typed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from app.recipes import StageIn
from app.reports.base import ReportModel as _Model
from app.reports.search import SearchSection
from app.reports.summary import (
    CompressSummary,
    EvaluateSummary,
    Headline,
    JobSummary,
    MeasuredOn,
    parse_summary,
)

REPORT_VERSION = 3

__all__ = [
    "REPORT_VERSION",
    "CompressSummary",
    "EvaluateSummary",
    "Headline",
    "JobSummary",
    "MeasuredOn",
    "Report",
    "parse_summary",
]


# -- measured figures of one model --------------------------------------------------------------
class Spread(_Model):
    median: float
    p90: float
    runs: int


class Efficiency(_Model):
    """Serving speed and memory, measured in a fresh process on the worker's device. The batched
    step time's key names its batch size (`decode_ms_per_step_b8`): an extra field, a Spread."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Spread] = Field(init=False)

    ttft_ms: Spread
    decode_ms_per_token_b1: Spread
    decode_tokens_per_second_b1: float
    batch_size: int
    throughput_tokens_per_second: float
    prompt_tokens: int
    new_tokens: int
    warmup: int
    repetitions: int = Field(description="timed runs the figures rest on")
    requested_repetitions: int | None = None
    stopped_by_time_budget: bool | None = Field(
        default=None, description="fewer runs than requested: evaluation.efficiency.max_seconds"
    )
    peak_memory_bytes: int
    peak_rss_bytes: int | None = None
    memory_measure: str
    load_seconds: float
    device: str
    dtype: str
    threads: int
    runtime: str = Field(
        default="transformers", description="what served it: transformers or llama.cpp (GGUF)"
    )
    runtime_version: str | None = None
    runtime_note: str | None = Field(
        default=None, description="why this runtime is not the one the format is made for"
    )


class TaskResult(_Model):
    metrics: dict[str, float] = Field(description="metric name → value (acc, acc_norm, …)")
    samples: int


class BaselineSource(_Model):
    """Where the original model's figures came from: this job, or the baseline cache."""

    cached: bool
    key: str
    computed_by_job: str | None = None
    stored: bool | None = None


class MeasuredModel(_Model):
    """What every measured model has: counts, perplexity, generations, tasks, efficiency."""

    parameters: int
    nonzero_parameters: int
    effective_bits_per_parameter: float
    perplexity: float | None = None
    nll_mean: float | None = None
    scored_tokens: int | None = None
    windows: int | None = None
    generations: list[str] | None = None
    tasks: dict[str, TaskResult] | None = None
    efficiency: Efficiency | None = None


class OriginalModel(MeasuredModel):
    """The input model (also an evaluate job's `model_metrics`)."""

    checkpoint_bytes_bf16: int = Field(description="its weights saved in 16 bits (safetensors)")
    baseline: BaselineSource | None = None


class QuantizedStorage(_Model):
    quantized_layers: int
    quantized_weights: int
    quantized_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int] | None = Field(
        default=None, description="GGUF: quantized tensors per llama.cpp type, as written"
    )
    all_bits_per_weight: float | None = Field(
        default=None, description="GGUF: bits per parameter over every tensor in the file"
    )


class TensorSize(_Model):
    name: str
    parameters: int
    dtype: str


class UnquantizedTensors(_Model):
    tensors: int
    parameters: int
    largest: list[TensorSize]


class CompressedModel(MeasuredModel):
    checkpoint_bytes: int = Field(
        description="the artifact's weight files (safetensors, or the GGUF file), as saved"
    )
    artifact_bytes: int = Field(description="every file of the artifact")
    weight_files: int | None = Field(
        default=None, description="safetensors files (shards: output.max_shard_bytes)"
    )
    quantized_storage: QuantizedStorage | None = None
    unquantized_tensors: UnquantizedTensors | None = None


# -- the job's settings and what happened --------------------------------------------------------
class Overlap(_Model):
    window: int
    evaluation_windows: int
    shared_windows: int
    calibration_tokens_checked: int


class EvaluationSettings(_Model):
    dataset: str
    dataset_sha256: str
    split: str
    overlap_with_calibration: Overlap
    tokens: int
    context_length: int
    stride: int
    tasks: list[dict[str, Any]] = Field(description="the job's task specs, as submitted")
    efficiency: dict[str, Any] | None = Field(description="the job's efficiency spec, or null")


class PhaseMemoryFigures(_Model):
    peak_rss_bytes: int = Field(description="the process's peak RSS during the phase")
    peak_above_start_bytes: int = Field(
        description="that peak above the RSS the job started at (the runtime and its "
        "libraries are a fixed cost, not the model's)"
    )
    cuda_peak_bytes: int | None = Field(default=None, description="torch.cuda.max_memory_allocated")


class PlannedPhase(_Model):
    host_bytes: int
    device_bytes: int


class MemoryPlanFigures(_Model):
    """The memory plan made before the weights loaded (app/planning/memory_plan.py)."""

    mode: str = Field(description="how the model is held: in_memory")
    device: str
    fits: bool
    shortfall: str | None
    host_peak_bytes: int
    device_peak_bytes: int
    host_budget_bytes: int | None
    device_budget_bytes: int | None
    phases: dict[str, PlannedPhase] = Field(description="bytes above the post-import RSS")
    model: dict[str, Any] = Field(description="the sizes the plan read: parameters, bytes, ...")


class MemoryFigures(_Model):
    """Measured peak memory per phase, beside the plan made before the weights loaded."""

    start_rss_bytes: int
    peak_reset_per_phase: bool = Field(
        description="false where the OS did not let the peak be reset: each phase's peak is "
        "then the process's peak so far"
    )
    phases: dict[str, PhaseMemoryFigures]
    plan: MemoryPlanFigures | None = None


class Estimate(_Model):
    memory_bytes: int | None = Field(description="the memory plan's peak on the job's device")
    available_bytes: int | None = Field(description="the memory the plan was checked against")
    seconds: float
    device_gflops: float
    breakdown_s: dict[str, float]


class StageMetrics(_Model):
    parameters: int
    nonzero_parameters: int
    perplexity: float | None = None


class StageNotes(_Model):
    """One stage's notes: its method, figures measured after it (not after the last stage, whose
    figures are the compressed model's) and what the method itself reports (extra fields:
    sparsity reached, layers per scheme, training steps…)."""

    model_config = ConfigDict(extra="allow")

    method: str
    metrics_after: StageMetrics | None = None
    mask_refilled_weights: int | None = None


class LayerErrorRow(_Model):
    layer: str
    status: Literal["ok", "removed", "reshaped"]
    compressed_layer: str | None = None
    relative_error: float | None = None


class DamagedLayer(_Model):
    layer: str
    relative_error: float


class LayerError(_Model):
    tokens: int
    method: str
    layers: list[LayerErrorRow]
    most_damaged: list[DamagedLayer]
    mean_relative_error: float | None
    counts: dict[str, int]


class LoadCheck(_Model):
    ok: bool
    artifact_format: str
    loader: str
    seconds: float


class GgufOutput(_Model):
    """One GGUF file written beside the recipe's artifact (the job's `output.gguf`)."""

    type: str = Field(description="llama.cpp type, e.g. Q4_K_M")
    imatrix: bool
    path: str = Field(description="where it is in the job's artifacts: gguf/model-<TYPE>.gguf")
    bytes: int
    bits_per_weight: float = Field(description="over the quantized tensors, read from the file")
    all_bits_per_weight: float = Field(description="over every tensor in the file")
    tensor_types: dict[str, int] = Field(description="tensors per llama.cpp type, as written")
    perplexity: float | None = Field(
        default=None, description="transformers on the dequantized file, the job's settings"
    )
    perplexity_change_pct: float | None = Field(default=None, description="against the original")
    seconds: float = Field(description="conversion and measurement")


class Generation(_Model):
    prompt: str
    original: str | None
    compressed: str


class EvaluationStatus(_Model):
    status: Literal["ok", "failed"]
    error: str | None = None
    cached: bool | None = None


# -- the report --------------------------------------------------------------------------------
class ModelProvenance(_Model):
    """The input model: its source as submitted, and what the worker read from it."""

    source: dict[str, Any]
    weights_sha256: str
    architecture: str
    gguf_sha256: str | None = None


class Report(_Model):
    version: Literal[3] = 3  # REPORT_VERSION
    job_id: str
    kind: Literal["compress", "evaluate", "search"]
    model: ModelProvenance
    recipe: list[StageIn] = Field(description="the stages as run, defaults filled in")
    seed: int
    device: str
    device_name: str
    evaluation: EvaluationSettings
    estimate: Estimate
    stages: list[StageNotes]
    # compress jobs
    format: str | None = None
    original: OriginalModel | None = None
    compressed: CompressedModel | None = None
    generations: list[Generation] | None = None
    layer_error: LayerError | None = None
    load_check: LoadCheck | None = None
    gguf_outputs: list[GgufOutput] | None = Field(
        default=None, description="GGUF files beside the artifact (the job's output.gguf)"
    )
    search: SearchSection | None = Field(
        default=None, description="A search job's candidates; the rest is its winner's"
    )
    # evaluate jobs: the model as it is
    model_metrics: OriginalModel | None = None
    summary: CompressSummary | EvaluateSummary
    memory: MemoryFigures | None = None
    evaluations: dict[str, EvaluationStatus] = Field(
        description="`<model>.<evaluation>` → whether it ran (a failed one names its error)"
    )
    warnings: list[str]
    timings_s: dict[str, float]
    libraries: dict[str, str]

    @property
    def evaluate_only(self) -> bool:
        return self.kind == "evaluate"

    @property
    def methods(self) -> list[str]:
        return [stage.method for stage in self.recipe]


def report_json_schema() -> dict[str, Any]:
    schema = Report.model_json_schema(mode="serialization")
    schema["$id"] = "https://squash.dev/schemas/report-v2.json"
    schema["title"] = "Squash evaluation report"
    return schema
