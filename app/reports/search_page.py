"""A search job's part of the report page: the Pareto plot of its candidates (bits per quantized
weight against perplexity), the candidate table with why each can or cannot win, and the
layers the sensitivity pass found most fragile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from app.reports.charts import _figure, _svg
from app.reports.page_cells import cell
from app.reports.search import SearchCandidate, SearchSection

MOST_SENSITIVE = 10


def pareto_chart(candidates: list[SearchCandidate]) -> str:
    measured = [
        c
        for c in candidates
        if c.perplexity is not None and c.bits_per_quantized_weight is not None
    ]
    if not measured:
        return ""
    figure, axes = _figure(8, 3.8)
    front = sorted(
        (c for c in measured if c.on_front), key=lambda c: c.bits_per_quantized_weight or 0
    )
    if len(front) > 1:
        axes.plot(
            [c.bits_per_quantized_weight for c in front],
            [c.perplexity for c in front],
            linestyle="--",
            color="#1a7f37",
            linewidth=1,
            label="Pareto front",
        )
    groups: tuple[tuple[str, Callable[[SearchCandidate], bool], str, int], ...] = (
        ("the pick", lambda c: c.winner, "#d1495b", 80),
        ("on the front", lambda c: c.on_front and not c.winner, "#1a7f37", 36),
        ("other candidates", lambda c: not c.on_front and not c.winner, "#8895a7", 36),
    )
    for label, keep, colour, size in groups:
        chosen = [c for c in measured if keep(c)]
        if chosen:
            axes.scatter(
                [c.bits_per_quantized_weight for c in chosen],
                [c.perplexity for c in chosen],
                c=colour,
                s=size,
                label=label,
                zorder=3,
            )
    for c in measured:
        axes.annotate(
            c.name,
            (c.bits_per_quantized_weight, c.perplexity),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
        )
    axes.set_xlabel("bits per quantized weight (read from the files)")
    axes.set_ylabel("perplexity (short evaluation)")
    axes.legend(fontsize=8)
    return _svg(figure, "pareto")


def search_section(search: SearchSection | None) -> dict[str, Any] | None:
    if search is None:
        return None
    rows = []
    for i, c in enumerate(search.candidates):
        key = f"search/candidates/{i}"
        rows.append(
            {
                "name": c.name,
                "job_id": c.job_id,
                "state": c.state,
                "bits": cell(f"{key}/bits_per_quantized_weight", c.bits_per_quantized_weight),
                "size": cell(f"{key}/checkpoint_bytes", c.checkpoint_bytes, "bytes"),
                "perplexity": cell(f"{key}/perplexity", c.perplexity),
                "change": cell(f"{key}/change_pct", c.change_pct, "pct"),
                "front": "yes" if c.on_front else "",
                "verdict": "the pick" if c.winner else (c.excluded or ""),
                "winner": c.winner,
            }
        )
    fragile = sorted(search.sensitivity, key=lambda row: -max(row.scores.values(), default=0.0))[
        :MOST_SENSITIVE
    ]
    return {
        "chart": Markup(pareto_chart(search.candidates)),
        "why": search.why,
        "budget_bits": search.budget_bits_per_weight,
        "tokens": search.candidate_evaluation_tokens,
        "rows": rows,
        "notes": search.notes,
        "fragile": [
            (row.layer, ", ".join(f"{k} {v:.3g}" for k, v in row.scores.items())) for row in fragile
        ],
        "seconds": search.sensitivity_seconds,
    }
