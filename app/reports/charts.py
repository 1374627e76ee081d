"""The report page's charts as inline SVG (no script, no image file): per-layer error bars and
the size-vs-perplexity scatter with its Pareto frontier."""

from __future__ import annotations

import math
from html import escape

from app.reports.points import ORIGINAL, Point, pareto_frontier
from app.reports.schema import LayerErrorRow


def bar_chart(layers: list[LayerErrorRow]) -> str:
    """Relative output error of each linear layer, in model order."""
    measured = [
        (row.layer, row.relative_error)
        for row in layers
        if row.status == "ok" and row.relative_error is not None
    ]
    if not measured:
        return '<p class="muted">No layer was comparable.</p>'
    width, height, left, bottom = 1060, 240, 50, 30
    top = max(error for _, error in measured) or 1.0
    step = (width - left) / len(measured)
    bars = []
    for index, (layer, error) in enumerate(measured):
        h = (height - bottom - 10) * error / top
        x, y = left + index * step, height - bottom - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 0.6, 0.6):.1f}" height="{h:.1f}" '
            f'fill="#4a6fd1"><title>{escape(layer)}: {error:.4g}</title>'
            "</rect>"
        )
    axis = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>'
        f'<text x="{left - 4}" y="14" text-anchor="end">{top:.3g}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 8}">first layer</text>'
        f'<text x="{width}" y="{height - 8}" text-anchor="end">last layer</text>'
    )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="per-layer relative error">{axis}{"".join(bars)}</svg>'
    )


def scatter(points: list[Point], current: str | None) -> str:
    """Size (x, log scale) against perplexity (y) of the tenant's jobs on this base model,
    the Pareto frontier drawn through the points nothing beats on both."""
    if not points:
        return '<p class="muted">No job on this model has both a size and a perplexity yet.</p>'
    width, height, left, bottom, pad = 760, 320, 60, 40, 16
    xs = [math.log10(p.bytes) for p in points]
    ys = [p.perplexity for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(p: Point) -> tuple[float, float]:
        x = left + pad + (math.log10(p.bytes) - x0) / (x1 - x0) * (width - left - 2 * pad)
        y = pad + (1 - (p.perplexity - y0) / (y1 - y0)) * (height - bottom - 2 * pad)
        return x, y

    frontier = pareto_frontier(points)
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(px, frontier))
    dots = []
    for point in points:
        x, y = px(point)
        mine = point.job_id == current
        on_front = any(point is f for f in frontier)
        colour = (
            "#d1495b"
            if mine
            else "#222222"
            if point.job_id == ORIGINAL
            else ("#1a7f37" if on_front else "#8895a7")
        )
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if mine else 4}" fill="{colour}">'
            f"<title>{escape(point.label)} ({escape(point.job_id)}): "
            f"{point.bytes / 1e6:.1f} MB, perplexity {point.perplexity:.4g}</title></circle>"
        )
    axes = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>'
        f'<line x1="{left}" y1="0" x2="{left}" y2="{height - bottom}" stroke="#999"/>'
        f'<text x="{(left + width) / 2}" y="{height - 8}" text-anchor="middle">'
        f"size on disk (log scale): {10**x0 / 1e6:.1f} to {10**x1 / 1e6:.1f} MB</text>"
        f'<text x="{left - 6}" y="{pad + 4}" text-anchor="end">{y1:.3g}</text>'
        f'<text x="{left - 6}" y="{height - bottom - pad}" text-anchor="end">{y0:.3g}</text>'
        f'<text x="14" y="{(height - bottom) / 2}" transform="rotate(-90 14 '
        f'{(height - bottom) / 2})" text-anchor="middle">perplexity</text>'
    )
    line = f'<polyline points="{path}" fill="none" stroke="#1a7f37" stroke-dasharray="4 3"/>'
    legend = (
        '<p class="muted"><span style="color:#d1495b">●</span> this job · '
        '<span style="color:#222222">●</span> the original · '
        '<span style="color:#1a7f37">●</span> Pareto frontier (no other job is both smaller '
        'and better) · <span style="color:#8895a7">●</span> other jobs on the same evaluation '
        "data and settings</p>"
    )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="size versus perplexity">{axes}{line}{"".join(dots)}</svg>{legend}'
    )
