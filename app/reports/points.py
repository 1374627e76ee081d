"""A job's place in size-vs-quality space, from the summary its worker stored (pure Python:
the API renders comparisons without torch)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.jobs import repository
from app.reports.schema import EvaluateSummary, JobSummary, parse_summary


@dataclass(frozen=True)
class Point:
    job_id: str
    label: str
    bytes: int
    perplexity: float


def point_of(job_id: str, methods: list[str], summary: JobSummary) -> Point | None:
    """A succeeded job's size and perplexity, or None without both figures."""
    if isinstance(summary, EvaluateSummary):  # the model as it is
        size, quality = summary.checkpoint_bytes_bf16, summary.evaluated.perplexity
        label = "evaluated as is"
    else:
        size, quality = summary.compressed_checkpoint_bytes, summary.compressed_perplexity
        label = " + ".join(methods) or "?"
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


def peer_points(session: Session, job_id: uuid.UUID, base_model: str) -> list[Point]:
    """The tenant's other succeeded jobs on the same base model (the report's chart: a
    snapshot, since the page is rendered once, when the job finishes)."""
    job = repository.get_job(session, job_id)
    peers = repository.succeeded_jobs_of_tenant(session, job.tenant_id) if job else []
    points = []
    for peer in peers:
        if peer.id == job_id or not peer.metrics or peer.metrics.get("base_model") != base_model:
            continue
        methods = [stage["method"] for stage in peer.spec["recipe"]]
        point = point_of(str(peer.id), methods, parse_summary(peer.metrics))
        if point:
            points.append(point)
    return points
