"""/v1/compare: the metrics table of several finished jobs on the same base model."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import repository
from app.jobs.state import JobState
from app.reports.points import pareto_frontier, point_of
from app.reports.schema import CompressSummary, EvaluateSummary, JobSummary, parse_summary

MAX_JOBS = 20


class CompareRow(BaseModel):
    job_id: uuid.UUID
    kind: str = Field(description="compress, or evaluate (the model as it is)")
    recipe: list[str] = Field(description="methods in order")
    labels: dict[str, str]
    metrics: dict[str, int | float] = Field(
        description="size_bytes, parameters, nonzero_parameters, perplexity, "
        "compression_ratio, effective_bits_per_parameter, decode_tokens_per_second_b1, "
        "throughput_tokens_per_second, ttft_ms, peak_memory_bytes, `<task>.<metric>`"
    )
    on_pareto_frontier: bool = Field(description="no other row is both smaller and better")


class CompareTable(BaseModel):
    base_model: str = Field(description="sha256 of the input model's weights")
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
    methods = {job.id: [stage["method"] for stage in job.spec["recipe"]] for job in jobs}
    points = [p for job in jobs if (p := point_of(str(job.id), methods[job.id], summaries[job.id]))]
    frontier = {p.job_id for p in pareto_frontier(points)}
    rows = [
        CompareRow(
            job_id=job.id,
            kind=job.spec.get("kind", "compress"),
            recipe=methods[job.id],
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
        base_model=next(iter(bases.values())), original=original, columns=columns, rows=rows
    )
