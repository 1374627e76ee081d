"""A job's place in size-vs-quality space, from the metrics its worker stored (pure Python:
the API renders comparisons without torch)."""

from __future__ import annotations

from typing import Any


def point_of(
    job_id: str, recipe: list[dict[str, Any]], metrics: dict[str, Any] | None
) -> dict[str, Any] | None:
    """{job_id, label, bytes, perplexity} of a succeeded job, or None without both figures."""
    if not metrics:
        return None
    if "evaluated" in metrics:  # an evaluate job: the model as it is
        size, quality = metrics.get("checkpoint_bytes_bf16"), metrics["evaluated"].get("perplexity")
        label = "evaluated as is"
    else:
        size, quality = (
            metrics.get("compressed_checkpoint_bytes"),
            metrics.get("compressed_perplexity"),
        )
        label = " + ".join(stage["method"] for stage in recipe) or "?"
    if size is None or quality is None:
        return None
    return {"job_id": job_id, "label": label, "bytes": size, "perplexity": quality}


def pareto_frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both size and perplexity, smallest first."""
    frontier: list[dict[str, Any]] = []
    best = float("inf")
    for point in sorted(points, key=lambda p: (p["bytes"], p["perplexity"])):
        if point["perplexity"] < best:
            frontier.append(point)
            best = point["perplexity"]
    return frontier
