"""A search job's section of the report: every candidate with what it measured, the front, the
sensitivity table, and why the winner won."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.reports.base import ReportModel


class SearchCandidate(ReportModel):
    name: str
    job_id: str
    state: str
    recipe: list[dict[str, Any]]
    budget_bits: float = Field(description="The allocation's budget, bits per quantized weight")
    planned_bits: float = Field(description="What the allocation (or uniform scheme) stores")
    bits_per_quantized_weight: float | None = Field(description="Read from its saved files")
    checkpoint_bytes: int | None
    perplexity: float | None = Field(description="On the candidates' short evaluation")
    change_pct: float | None
    accuracy_drop: float | None = Field(
        default=None, description="The original's task metric less this one's, when asked"
    )
    decode_tokens_per_second: float | None = Field(
        default=None, description="Batch 1, when the budget sets a minimum"
    )
    within_budget: bool | None = Field(description="Null: it did not finish")
    on_front: bool = Field(description="No other candidate has fewer bits and lower perplexity")
    excluded: str | None = Field(description="Why it cannot win (null: it can)")
    winner: bool


class SensitivityRow(ReportModel):
    layer: str
    parameters: int
    scores: dict[str, float] = Field(
        description="Setting (e.g. `W4 g64`) → Fisher-weighted rounding error: the estimated "
        "loss increase were this layer alone quantized so"
    )


class SearchSection(ReportModel):
    budget: dict[str, Any] = Field(description="The request's budget")
    quality: dict[str, Any] = Field(description="The request's tolerance")
    budget_bits_per_weight: float = Field(description="The budget as bits per quantized weight")
    candidate_evaluation_tokens: int
    candidates: list[SearchCandidate]
    winner: str | None = Field(description="The winning candidate's job id")
    original_job_id: str | None = Field(
        default=None,
        description="The evaluate job that measured the original beside the candidates (the "
        "report's original figures, through the baseline cache)",
    )
    why: str
    notes: list[str] = Field(description="Candidates that did not finish, and why")
    sensitivity_seconds: float
    sensitivity: list[SensitivityRow]
