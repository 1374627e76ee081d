"""The report page's charts, drawn by matplotlib as SVG and inlined in the page (no script, no
image file: the page's CSP forbids loading anything). Text stays text (`svg.fonttype: none`),
so axis labels and legends are in the page's DOM, and ids are salted per chart so two charts on
one page never share one. matplotlib is imported here only, by the worker that renders the page.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from app.reports.points import ORIGINAL, Point, pareto_frontier
from app.reports.schema import LayerErrorRow

LAYER_NAME = re.compile(r"\.layers\.(\d+)\.(?:[a-z_]+\.)?([a-z0-9_]+)$")
COLOURS = ("#4a6fd1", "#d1495b", "#1a7f37", "#e09f3e", "#7b2cbf", "#2a9d8f", "#6c757d")


@dataclass(frozen=True)
class LayerSummary:
    """What the per-layer chart shows, in words: for the page's sentence."""

    by_type: dict[str, float]  # mean relative error per layer type, worst first
    worst_type: str
    worst_type_share: int  # how many of the `worst_count` most damaged layers are of that type
    worst_count: int
    worst_layer: str
    worst_error: float


def layer_kind(name: str) -> tuple[str, int] | None:
    """`model.layers.12.self_attn.v_proj` → ("v_proj", 12)."""
    found = LAYER_NAME.search(name)
    return (found.group(2), int(found.group(1))) if found else None


def summarize_layers(layers: list[LayerErrorRow], worst: int = 10) -> LayerSummary | None:
    measured = [
        (row.layer, row.relative_error)
        for row in layers
        if row.status == "ok" and row.relative_error is not None
    ]
    if not measured:
        return None
    groups: dict[str, list[float]] = defaultdict(list)
    for name, error in measured:
        kind = layer_kind(name)
        groups[kind[0] if kind else "other"].append(error)
    by_type = dict(
        sorted(
            ((k, sum(v) / len(v)) for k, v in groups.items()), key=lambda kv: kv[1], reverse=True
        )
    )
    top = sorted(measured, key=lambda item: item[1], reverse=True)[:worst]
    top_kinds = [(layer_kind(name) or ("other", 0))[0] for name, _ in top]
    leader = max(set(top_kinds), key=top_kinds.count)
    return LayerSummary(
        by_type=by_type,
        worst_type=leader,
        worst_type_share=top_kinds.count(leader),
        worst_count=len(top),
        worst_layer=top[0][0],
        worst_error=top[0][1],
    )


def _svg(figure: Any, salt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # no XML prolog or doctype inside the page


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height))
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(alpha=0.3)
    return figure, axes


def layer_error_chart(layers: list[LayerErrorRow]) -> str:
    """Relative output error of each linear layer against its depth, one series per layer
    type (q_proj, v_proj, down_proj, …): what is damaged, and where."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in layers:
        found = layer_kind(row.layer)
        if row.status == "ok" and row.relative_error is not None and found:
            series[found[0]].append((found[1], row.relative_error))
    if not series:
        return ""
    figure, axes = _figure(10, 3.6)
    for index, (kind, points) in enumerate(sorted(series.items())):
        points.sort()
        axes.plot(
            [depth for depth, _ in points],
            [error for _, error in points],
            marker="o",
            markersize=3,
            linewidth=1.2,
            color=COLOURS[index % len(COLOURS)],
            label=kind,
        )
    axes.set_xlabel("decoder layer (depth)")
    axes.set_ylabel("relative output error |y' - y| / |y|")
    axes.legend(title="layer type", fontsize=8, ncols=min(len(series), 7), loc="upper left")
    return _svg(figure, "layer-error")


def scatter_chart(points: list[Point], current: str | None) -> str:
    """Size on disk (log scale) against perplexity of the original and the tenant's jobs on
    this base model measured on the same evaluation settings; the Pareto frontier through the
    points nothing beats on both."""
    if not points:
        return ""
    figure, axes = _figure(8, 3.8)
    frontier = pareto_frontier([p for p in points if p.job_id != ORIGINAL])
    if len(frontier) > 1:
        axes.plot(
            [p.bytes / 1e6 for p in frontier],
            [p.perplexity for p in frontier],
            linestyle="--",
            color="#1a7f37",
            linewidth=1,
            label="Pareto frontier",
        )
    on_front = {p.job_id for p in frontier}
    groups = (
        ("the original (16-bit)", lambda p: p.job_id == ORIGINAL, "#222222", "s", 60),
        ("this job", lambda p: p.job_id == current, "#d1495b", "o", 70),
        (
            "on the frontier",
            lambda p: p.job_id in on_front and p.job_id != current,
            "#1a7f37",
            "o",
            30,
        ),
        (
            "other jobs",
            lambda p: p.job_id not in on_front | {current, ORIGINAL},
            "#8895a7",
            "o",
            30,
        ),
    )
    for label, keep, colour, marker, size in groups:
        chosen = [p for p in points if keep(p)]
        if chosen:
            axes.scatter(
                [p.bytes / 1e6 for p in chosen],
                [p.perplexity for p in chosen],
                c=colour,
                marker=marker,
                s=size,
                label=label,
                zorder=3,
            )
    for point in points:
        if point.job_id in (ORIGINAL, current):
            axes.annotate(
                point.label,
                (point.bytes / 1e6, point.perplexity),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
    axes.set_xscale("log")
    axes.set_xlabel("size on disk (MB, log scale)")
    axes.set_ylabel("perplexity (lower is better)")
    axes.legend(fontsize=8)
    return _svg(figure, "scatter")
