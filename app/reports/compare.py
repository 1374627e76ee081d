"""/v1/compare: the metrics table of several finished jobs on the same base model."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import repository
from app.jobs.models import Job
from app.jobs.state import JobState
from app.reports.points import pareto_frontier, point_of

MAX_JOBS = 20


class CompareRow(BaseModel):
    job_id: uuid.UUID
    kind: str = Field(description="compress, or evaluate (the model as it is)")
    recipe: list[str] = Field(description="methods in order")
    labels: dict[str, str]
    metrics: dict[str, Any] = Field(
        description="size_bytes, parameters, nonzero_parameters, perplexity, "
        "compression_ratio, effective_bits_per_parameter, decode_tokens_per_second_b1, "
        "throughput_tokens_per_second, ttft_ms, peak_memory_bytes, `<task>.<metric>`"
    )
    on_pareto_frontier: bool = Field(description="no other row is both smaller and better")


class CompareTable(BaseModel):
    base_model: str = Field(description="sha256 of the input model's weights")
    original: dict[str, Any] | None = Field(
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


def row_metrics(job: Job) -> dict[str, Any]:
    metrics = job.metrics or {}
    if job.spec.get("kind") == "evaluate":
        return {
            "size_bytes": metrics.get("checkpoint_bytes_bf16"),
            "parameters": metrics.get("parameters"),
            "nonzero_parameters": metrics.get("nonzero_parameters"),
            **metrics.get("evaluated", {}),
        }
    return {
        "size_bytes": metrics.get("compressed_checkpoint_bytes"),
        "parameters": metrics.get("parameters"),
        "nonzero_parameters": metrics.get("nonzero_parameters"),
        "compression_ratio": metrics.get("compression_ratio"),
        "effective_bits_per_parameter": metrics.get("effective_bits_per_parameter"),
        **metrics.get("compressed", {}),
    }


def compare(session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> CompareTable:
    jobs = []
    for job_id in ids:
        job = repository.get_job(session, job_id, tenant_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.state != JobState.SUCCEEDED.value or not job.metrics:
            raise Conflict(
                f"job {job_id} is {job.state}: only succeeded jobs have metrics to compare",
                code="job_not_finished",
            )
        jobs.append(job)
    bases = {str(job.id): job.metrics.get("base_model") for job in jobs}
    if len(set(bases.values())) != 1 or None in bases.values():
        raise InvalidInput(
            "jobs compare only on the same base model; these ran on "
            + ", ".join(f"{job_id}: {base}" for job_id, base in bases.items()),
            code="different_base_models",
            field="jobs",
        )
    points = [p for job in jobs if (p := point_of(str(job.id), job.spec["recipe"], job.metrics))]
    frontier = {p["job_id"] for p in pareto_frontier(points)}
    rows = [
        CompareRow(
            job_id=job.id,
            kind=job.spec.get("kind", "compress"),
            recipe=[stage["method"] for stage in job.spec["recipe"]],
            labels={label.key: label.value for label in job.labels},
            metrics={k: v for k, v in row_metrics(job).items() if v is not None},
            on_pareto_frontier=str(job.id) in frontier,
        )
        for job in jobs
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row.metrics))
    original = next(
        (job.metrics.get("original") for job in jobs if job.metrics.get("original")), None
    )
    if original is not None:
        first = next(j for j in jobs if j.metrics.get("original"))
        original = {
            "size_bytes_bf16": first.metrics.get("original_checkpoint_bytes_bf16"),
            **original,
        }
    return CompareTable(
        base_model=next(iter(bases.values())), original=original, columns=columns, rows=rows
    )
