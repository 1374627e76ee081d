"""A job's place in size-vs-quality space, from the summary its worker stored (pure Python:
the API renders comparisons without torch)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.jobs import repository
from app.recipes import METHODS
from app.reports.schema import EvaluateSummary, JobSummary, parse_summary

# Shown whatever their value: what a reader compares first.
HEADLINE_PARAMS = ("bits", "group_size", "type", "sparsity")


def set_params(method: str, params: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """Each parameter of a stage as run, and whether the job set it (it differs from the
    method's default): what the page highlights and the compare label names."""
    spec = METHODS.get(method)
    fields = spec.params.model_fields if spec else {}
    found = []
    for name, value in params.items():
        field = fields.get(name)
        default = field.get_default(call_default_factory=True) if field else None
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        found.append((name, value, field is None or value != default))
    return found


def stage_label(stage: dict[str, Any]) -> str:
    """`rtn(bits=8, group_size=null)`: the method with its headline parameters and those that
    differ from its defaults, so two jobs of one method at different settings read
    differently."""
    method = stage["method"]
    shown = [
        f"{name}={_short(value)}"
        for name, value, changed in set_params(method, stage.get("params") or {})
        if changed or name in HEADLINE_PARAMS
    ]
    return f"{method}({', '.join(shown)})" if shown else method


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def recipe_label(stages: list[dict[str, Any]]) -> str:
    return " + ".join(stage_label(stage) for stage in stages) or "as is"


ORIGINAL = "original"  # the input model's point (not a job)


@dataclass(frozen=True)
class Point:
    job_id: str
    label: str
    bytes: int
    perplexity: float


def point_of(job_id: str, stages: list[dict[str, Any]], summary: JobSummary) -> Point | None:
    """A succeeded job's size and perplexity, or None without both figures."""
    if isinstance(summary, EvaluateSummary):  # the model as it is
        size, quality = summary.checkpoint_bytes_bf16, summary.evaluated.perplexity
        label = "evaluated as is"
    else:
        size, quality = summary.compressed_checkpoint_bytes, summary.compressed_perplexity
        label = recipe_label(stages)
    if quality is None:
        return None
    return Point(job_id=job_id, label=label, bytes=size, perplexity=quality)


def pareto_frontier(points: list[Point]) -> list[Point]:
    """Points no other point beats on both size and perplexity, smallest first."""
    frontier: list[Point] = []
    best = float("inf")
    for point in sorted(points, key=lambda p: (p.bytes, p.perplexity)):
        if point.perplexity < best:
            frontier.append(point)
            best = point.perplexity
    return frontier


def peer_points(session: Session, job_id: uuid.UUID, summary: JobSummary) -> list[Point]:
    """The tenant's other succeeded jobs on the same base model whose perplexity was measured
    on the same evaluation data and settings (a perplexity on other text or windows is another
    scale: the report's chart compares like with like). A snapshot: the page is rendered once,
    when the job finishes."""
    job = repository.get_job(session, job_id)
    peers = repository.succeeded_jobs_of_tenant(session, job.tenant_id) if job else []
    key = summary.measured_on.perplexity_key() if summary.measured_on else None
    points = []
    for peer in peers:
        if peer.id == job_id or not peer.metrics:
            continue
        theirs = parse_summary(peer.metrics)
        if theirs.base_model != summary.base_model or theirs.measured_on is None:
            continue
        if theirs.measured_on.perplexity_key() != key:
            continue
        point = point_of(str(peer.id), peer.spec["recipe"], theirs)
        if point:
            points.append(point)
    return points


def original_point(summary: JobSummary) -> Point | None:
    """The input model itself (16-bit size, its perplexity): where every compression starts."""
    if isinstance(summary, EvaluateSummary) or summary.original_perplexity is None:
        return None
    return Point(
        job_id=ORIGINAL,
        label="original (16-bit)",
        bytes=summary.original_checkpoint_bytes_bf16,
        perplexity=summary.original_perplexity,
    )
