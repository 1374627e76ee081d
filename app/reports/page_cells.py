"""The report page's figures: each a Cell that knows its path in report.json, the headline
table's rows and the change column that marks regressions (rendered by `app/reports/html.py`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.reports.schema import (
    CompressedModel,
    Efficiency,
    MeasuredModel,
    OriginalModel,
    Report,
)

REGRESSION_PCT = 1.0
# Which way is better, for the change column: -1 lower is better, +1 higher, 0 neither.
DIRECTION = {
    "size": -1,
    "perplexity": -1,
    "efficiency/ttft_ms/median": -1,
    "efficiency/ttft_ms/p90": -1,
    "efficiency/decode_tokens_per_second_b1": 1,
    "efficiency/decode_ms_per_token_b1/p90": -1,
    "efficiency/throughput_tokens_per_second": 1,
    "efficiency/peak_memory_bytes": -1,
}


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        return f"{value / 1e6:,.1f} MB"
    if unit == "count":
        return f"{value / 1e6:,.2f}M" if value >= 1e6 else f"{value:,}"
    if unit == "pct":
        return f"{value:+.2f} %"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """A figure of the report: `key` is its path in report.json ('/'-separated)."""

    key: str | None
    value: Any
    text: str

    @property
    def json(self) -> str:
        return json.dumps(self.value)


def cell(key: str, value: Any, unit: str = "") -> Cell:
    return Cell(key if value is not None else None, value, fmt(value, unit))


def _size(model: MeasuredModel) -> tuple[str, int | None]:
    if isinstance(model, OriginalModel):
        return "checkpoint_bytes_bf16", model.checkpoint_bytes_bf16
    if isinstance(model, CompressedModel):
        return "checkpoint_bytes", model.checkpoint_bytes
    return "checkpoint_bytes", None


def _efficiency(read: Callable[[Efficiency], Any]) -> Callable[[MeasuredModel], Any]:
    return lambda model: read(model.efficiency) if model.efficiency else None


# (title, path under the model's key, the typed field, unit).
ROWS: list[tuple[str, str, Callable[[MeasuredModel], Any], str]] = [
    ("Parameters", "parameters", lambda m: m.parameters, "count"),
    ("Nonzero parameters", "nonzero_parameters", lambda m: m.nonzero_parameters, "count"),
    (
        "Effective bits per parameter",
        "effective_bits_per_parameter",
        lambda m: m.effective_bits_per_parameter,
        "",
    ),
    ("Perplexity", "perplexity", lambda m: m.perplexity, ""),
    (
        "Time to first token, median (ms)",
        "efficiency/ttft_ms/median",
        _efficiency(lambda e: e.ttft_ms.median),
        "",
    ),
    (
        "Time to first token, p90 (ms)",
        "efficiency/ttft_ms/p90",
        _efficiency(lambda e: e.ttft_ms.p90),
        "",
    ),
    (
        "Decode tokens/s, batch 1",
        "efficiency/decode_tokens_per_second_b1",
        _efficiency(lambda e: e.decode_tokens_per_second_b1),
        "",
    ),
    (
        "Decode ms/token batch 1, p90",
        "efficiency/decode_ms_per_token_b1/p90",
        _efficiency(lambda e: e.decode_ms_per_token_b1.p90),
        "",
    ),
    (
        "Throughput tokens/s, larger batch",
        "efficiency/throughput_tokens_per_second",
        _efficiency(lambda e: e.throughput_tokens_per_second),
        "",
    ),
    (
        "Peak memory while serving",
        "efficiency/peak_memory_bytes",
        _efficiency(lambda e: e.peak_memory_bytes),
        "bytes",
    ),
]


def delta(key: str, cells: list[Cell]) -> dict[str, str] | None:
    """The compressed model against the original, marked where it is a regression."""
    if len(cells) != 2 or cells[0].value in (None, 0) or cells[1].value is None:
        return None
    change = 100 * (cells[1].value / cells[0].value - 1)
    direction = DIRECTION.get(key, 0)
    if key.endswith("/acc") or key.endswith("/acc_norm"):
        direction = 1
    worse = direction * change < -REGRESSION_PCT
    better = direction * change > REGRESSION_PCT
    mark = " ▲ worse" if worse else " ▼ better" if better else ""
    return {"text": f"{change:+.1f} %{mark}", "cls": "bad" if worse else "ok" if better else ""}


def metric_rows(sides: dict[str, MeasuredModel]) -> list[dict[str, Any]]:
    """The headline table: one column per measured model, keyed by where it sits in
    report.json ('original', 'compressed' or 'model_metrics'), and the change."""
    rows = []
    sizes = [cell(f"{side}/{_size(m)[0]}", _size(m)[1], "bytes") for side, m in sides.items()]
    if any(c.key for c in sizes):
        title = "Size on disk (weight files; the original as 16-bit)"
        rows.append({"title": title, "cells": sizes, "delta": delta("size", sizes)})
    for title, key, read, unit in ROWS:
        cells = [cell(f"{side}/{key}", read(model), unit) for side, model in sides.items()]
        if any(c.key for c in cells):
            rows.append({"title": title, "cells": cells, "delta": delta(key, cells)})
    tasks = sorted(
        {
            (task, metric)
            for model in sides.values()
            for task, result in (model.tasks or {}).items()
            for metric in result.metrics
        }
    )
    for task, metric in tasks:
        key = f"tasks/{task}/metrics/{metric}"
        cells = [cell(f"{side}/{key}", _task_metric(m, task, metric)) for side, m in sides.items()]
        rows.append({"title": f"{task} — {metric}", "cells": cells, "delta": delta(key, cells)})
    return rows


def _task_metric(model: MeasuredModel, task: str, metric: str) -> float | None:
    result = (model.tasks or {}).get(task)
    return result.metrics.get(metric) if result else None


def measured_sides(report: Report) -> dict[str, MeasuredModel]:
    """The measured models by their key in report.json."""
    if report.evaluate_only:
        return {"model_metrics": report.model_metrics} if report.model_metrics else {}
    sides: dict[str, MeasuredModel] = {}
    if report.original:
        sides["original"] = report.original
    if report.compressed:
        sides["compressed"] = report.compressed
    return sides
