"""/v1/compare: the metrics table of several finished jobs on the same base model."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import repository
from app.jobs.state import JobState
from app.recipes import StageIn
from app.reports.points import pareto_frontier, point_of, recipe_label
from app.reports.schema import (
    CompressSummary,
    EvaluateSummary,
    JobSummary,
    MeasuredOn,
    parse_summary,
)
from app.schema_types import DocumentedAs

MAX_JOBS = 20


class CompareRow(BaseModel):
    job_id: uuid.UUID
    kind: str = Field(description="compress, or evaluate (the model as it is)")
    recipe: Annotated[list[dict[str, Any]], DocumentedAs(list[StageIn])] = Field(
        description="the stages as run, every parameter filled in"
    )
    recipe_label: str = Field(
        description="the recipe in one line: the parameters that differ from the "
        "defaults, headline ones always: `rtn(bits=8, group_size=null)`"
    )
    series: int = Field(
        description="index into `series`: rows compare (and share a Pareto frontier) only "
        "within one"
    )
    labels: dict[str, str]
    metrics: dict[str, int | float] = Field(
        description="size_bytes, parameters, nonzero_parameters, perplexity, "
        "compression_ratio, effective_bits_per_parameter, decode_tokens_per_second_b1, "
        "throughput_tokens_per_second, ttft_ms, peak_memory_bytes, `<task>.<metric>`"
    )
    on_pareto_frontier: bool = Field(
        description="no other row of its series is both smaller and better"
    )


class Series(BaseModel):
    measured_on: MeasuredOn | None = Field(
        description="evaluation data and settings of its rows' perplexities (null: a job "
        "from before they were recorded)"
    )
    jobs: list[uuid.UUID]


class CompareTable(BaseModel):
    base_model: str = Field(description="sha256 of the input model's weights")
    series: list[Series] = Field(
        description="rows grouped by what their perplexity was measured on; more than one "
        "means some rows do not compare (see `warnings`)"
    )
    warnings: list[str]
    original: dict[str, int | float] | None = Field(
        description="The input model's figures, as the compress jobs measured them"
    )
    columns: list[str]
    rows: list[CompareRow]


def parse_ids(raw: list[str]) -> list[uuid.UUID]:
    """`jobs=a,b` or `jobs=a&jobs=b`; order kept, repeats dropped."""
    ids: list[uuid.UUID] = []
    for item in (part.strip() for value in raw for part in value.split(",")):
        if not item:
            continue
        try:
            job_id = uuid.UUID(item)
        except ValueError as exc:
            raise InvalidInput(f"{item!r} is not a job id", field="jobs") from exc
        if job_id not in ids:
            ids.append(job_id)
    if not 1 <= len(ids) <= MAX_JOBS:
        raise InvalidInput(f"name between 1 and {MAX_JOBS} jobs", field="jobs")
    return ids


def row_metrics(summary: JobSummary) -> dict[str, int | float]:
    """The row's figures, read from the typed summary (absent ones left out)."""
    if isinstance(summary, EvaluateSummary):
        sizes: dict[str, int | float | None] = {
            "size_bytes": summary.checkpoint_bytes_bf16,
            "parameters": summary.parameters,
            "nonzero_parameters": summary.nonzero_parameters,
        }
        measured = summary.evaluated
    else:
        sizes = {
            "size_bytes": summary.compressed_checkpoint_bytes,
            "parameters": summary.parameters,
            "nonzero_parameters": summary.nonzero_parameters,
            "compression_ratio": summary.compression_ratio,
            "effective_bits_per_parameter": summary.effective_bits_per_parameter,
        }
        measured = summary.compressed
    return {k: v for k, v in sizes.items() if v is not None} | measured.figures()


def compare(session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> CompareTable:
    jobs = []
    for job_id in ids:
        job = repository.get_job(session, job_id, tenant_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.state != JobState.SUCCEEDED.value or not job.metrics:
            ended = job.state in (JobState.FAILED.value, JobState.CANCELLED.value)
            raise Conflict(
                f"job {job_id} is {job.state}: only succeeded jobs have metrics to compare"
                + ("" if ended else "; ask again once it has finished"),
                code="job_not_succeeded" if ended else "job_not_finished",
            )
        jobs.append(job)
    summaries = {job.id: parse_summary(job.metrics or {}) for job in jobs}
    bases = {str(job_id): summary.base_model for job_id, summary in summaries.items()}
    if len(set(bases.values())) != 1:
        raise InvalidInput(
            "jobs compare only on the same base model; these ran on "
            + ", ".join(f"{job_id}: {base}" for job_id, base in bases.items()),
            code="different_base_models",
            field="jobs",
        )
    groups = series_of(summaries)
    series_index = {job_id: i for i, group in enumerate(groups) for job_id in group.jobs}
    frontier: set[str] = set()
    for group in groups:  # a frontier across unlike perplexities would mean nothing
        points = [
            p
            for job in jobs
            if job.id in group.jobs
            and (p := point_of(str(job.id), job.spec["recipe"], summaries[job.id]))
        ]
        frontier |= {p.job_id for p in pareto_frontier(points)}
    rows = [
        CompareRow(
            job_id=job.id,
            kind=job.spec.get("kind", "compress"),
            recipe=job.spec["recipe"],
            recipe_label=recipe_label(job.spec["recipe"]),
            series=series_index[job.id],
            labels={label.key: label.value for label in job.labels},
            metrics=row_metrics(summaries[job.id]),
            on_pareto_frontier=str(job.id) in frontier,
        )
        for job in jobs
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row.metrics))
    # The input model's figures from the first compress job that measured it.
    measured = [
        s for s in summaries.values() if isinstance(s, CompressSummary) and s.original.figures()
    ]
    original: dict[str, int | float] | None = None
    if measured:
        original = {"size_bytes_bf16": measured[0].original_checkpoint_bytes_bf16}
        original |= measured[0].original.figures()
    return CompareTable(
        base_model=next(iter(bases.values())),
        series=groups,
        warnings=series_warnings(groups),
        original=original,
        columns=columns,
        rows=rows,
    )


def series_of(summaries: dict[uuid.UUID, JobSummary]) -> list[Series]:
    """Jobs grouped by the evaluation data and settings of their perplexity, in row order."""
    groups: dict[Any, Series] = {}
    for job_id, summary in summaries.items():
        on = summary.measured_on
        key = on.perplexity_key() if on else None
        groups.setdefault(key, Series(measured_on=on, jobs=[])).jobs.append(job_id)
    return list(groups.values())


def series_warnings(groups: list[Series]) -> list[str]:
    if len(groups) < 2:
        return []

    def describe(on: MeasuredOn | None) -> str:
        if on is None:
            return "unrecorded settings"
        return (
            f"{on.tokens} tokens of dataset {on.dataset_sha256[:12]}, context "
            f"{on.context_length}, stride {on.stride}"
        )

    parts = "; ".join(f"series {i}: {describe(g.measured_on)}" for i, g in enumerate(groups))
    return [
        "perplexities measured on different evaluation data or settings do not compare: "
        f"the rows form {len(groups)} series, each with its own Pareto frontier ({parts})"
    ]
