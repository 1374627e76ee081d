"""The job summary (`jobs.metrics`): the headline figures `/v1/compare` and the job list show,
typed (part of the report, `app/reports/schema.py`)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from app.reports.base import ReportModel as _Model


class Headline(_Model):
    """The figures `/v1/compare` and the job's `metrics` show for one model. Task metrics are
    extra fields named `<task>.<metric>` (floats)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    perplexity: float | None = None
    decode_tokens_per_second_b1: float | None = None
    throughput_tokens_per_second: float | None = None
    ttft_ms: float | None = None
    peak_memory_bytes: int | None = None

    def figures(self) -> dict[str, float | int]:
        """Every measured figure by name, typed fields first, then the task metrics."""
        return {name: value for name, value in self if value is not None}


class MeasuredOn(_Model):
    """What a summary's perplexity depends on besides the model: two jobs' perplexities compare
    only when these are equal (`/v1/compare` separates them otherwise). Speed figures also
    depend on the device and runtime."""

    dataset_sha256: str
    tokens: int
    context_length: int
    stride: int
    device: str | None = None

    def perplexity_key(self) -> tuple[str, int, int, int]:
        return (self.dataset_sha256, self.tokens, self.context_length, self.stride)


class CompressSummary(_Model):
    base_model: str = Field(description="sha256 of the input model's weights")
    measured_on: MeasuredOn | None = Field(
        default=None, description="the evaluation settings (absent in jobs before report v3)"
    )
    original_checkpoint_bytes_bf16: int
    compressed_checkpoint_bytes: int
    compression_ratio: float
    parameters: int
    nonzero_parameters: int
    effective_bits_per_parameter: float
    bits_per_quantized_weight: float | None = None
    original_perplexity: float | None = None
    compressed_perplexity: float | None = None
    perplexity_change_pct: float | None = None
    compressed: Headline
    original: Headline


class EvaluateSummary(_Model):
    base_model: str = Field(description="sha256 of the model's weights")
    measured_on: MeasuredOn | None = None
    checkpoint_bytes_bf16: int
    parameters: int
    nonzero_parameters: int
    evaluated: Headline


JobSummary = CompressSummary | EvaluateSummary


def parse_summary(metrics: dict[str, Any]) -> JobSummary:
    """A job row's `metrics` (stored without a kind tag: an evaluate job's has `evaluated`)."""
    if "evaluated" in metrics:
        return EvaluateSummary.model_validate(metrics)
    return CompressSummary.model_validate(metrics)
