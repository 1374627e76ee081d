"""report.html: one self-contained page per job, rendered from report.json.

No script, no font, no image file: inline CSS and inline SVG charts, and a Content-Security-Policy
that forbids loading anything, so the page opens offline and leaks no request. Every figure taken
from report.json carries `data-key` (its path in report.json) and `data-value` (the JSON value),
so a test can check that the page says what the report says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from typing import Any

from app.reports.charts import bar_chart, scatter
from app.reports.points import Point
from app.reports.schema import (
    CompressedModel,
    CompressSummary,
    Efficiency,
    Generation,
    LayerError,
    MeasuredModel,
    OriginalModel,
    Report,
    StageMetrics,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eef;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#667}.bad{color:#b3261e}.ok{color:#1a7f37}code{font-size:12px}
.gen td{max-width:340px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


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
    return escape(str(value))


def cell(key: str, value: Any, unit: str = "") -> str:
    """A table cell showing `value`, a typed field of the report whose path in report.json is
    `key` ('/'-separated)."""
    if value is None:
        return '<td class="n muted">—</td>'
    data = escape(json.dumps(value), quote=True)
    return f'<td class="n" data-key="{escape(key)}" data-value="{data}">{fmt(value, unit)}</td>'


def _size(model: MeasuredModel) -> tuple[str, int | None]:
    if isinstance(model, OriginalModel):
        return "checkpoint_bytes_bf16", model.checkpoint_bytes_bf16
    if isinstance(model, CompressedModel):
        return "checkpoint_bytes", model.checkpoint_bytes
    return "checkpoint_bytes", None


def _efficiency(read: Callable[[Efficiency], Any]) -> Callable[[MeasuredModel], Any]:
    return lambda model: read(model.efficiency) if model.efficiency else None


# (title, path under the model's key, the typed field, unit); the size's path depends on the side.
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


def metric_rows(sides: dict[str, MeasuredModel]) -> str:
    """Rows of the headline table: one column per measured model, keyed by where it sits in
    report.json ('original', 'compressed' or 'model_metrics')."""
    out = []
    sizes = {side: _size(model) for side, model in sides.items()}
    cells = [cell(f"{side}/{key}", value, "bytes") for side, (key, value) in sizes.items()]
    if any("data-key" in c for c in cells):
        title = "Size on disk (safetensors; an input model as 16-bit)"
        out.append(f"<tr><th>{title}</th>{''.join(cells)}</tr>")
    for title, key, read, unit in ROWS:
        cells = [cell(f"{side}/{key}", read(model), unit) for side, model in sides.items()]
        if any("data-key" in c for c in cells):
            out.append(f"<tr><th>{title}</th>{''.join(cells)}</tr>")
    tasks = sorted(
        {
            (task, metric)
            for model in sides.values()
            for task, result in (model.tasks or {}).items()
            for metric in result.metrics
        }
    )
    for task, metric in tasks:
        cells = [
            cell(f"{side}/tasks/{task}/metrics/{metric}", _task_metric(model, task, metric))
            for side, model in sides.items()
        ]
        out.append(f"<tr><th>{escape(task)} — {escape(metric)}</th>{''.join(cells)}</tr>")
    return "".join(out)


def _task_metric(model: MeasuredModel, task: str, metric: str) -> float | None:
    result = (model.tasks or {}).get(task)
    return result.metrics.get(metric) if result else None


def render(report: Report, points: list[Point]) -> str:
    """The page. `points`: the tenant's jobs on the same base model (app/reports/points.py),
    this one included."""
    job = escape(report.job_id)
    evaluate_only = report.evaluate_only
    heads = "<th>model</th>" if evaluate_only else "<th>original</th><th>compressed</th>"
    source = escape(json.dumps(report.model.source))
    recipe = " → ".join(escape(method) for method in report.methods) or "none"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>Squash report {job}</title><style>{STYLE}</style></head><body>",
        f"<h1>{'Evaluation' if evaluate_only else 'Compression'} report</h1>",
        f'<p class="muted">job <code>{job}</code> · model <code>{source}</code> · recipe '
        f"{recipe} · device {escape(report.device_name or report.device)}"
        f" · report version {escape(str(report.version))}</p>",
    ]
    summary = report.summary
    if isinstance(summary, CompressSummary):
        parts.append("<table><tr>")
        parts.append("<th>Compression ratio (vs 16-bit original)</th>")
        parts.append(cell("summary/compression_ratio", summary.compression_ratio) + "</tr><tr>")
        parts.append("<th>Perplexity change</th>")
        parts.append(
            cell("summary/perplexity_change_pct", summary.perplexity_change_pct, "pct")
            + "</tr></table>"
        )
    parts.append(f"<h2>Metrics</h2><table><tr><th></th>{heads}</tr>")
    parts.append(metric_rows(measured_sides(report)) + "</table>")
    ev = report.evaluation
    parts.append(
        f'<p class="muted">Perplexity: {ev.tokens} tokens of {escape(ev.dataset)}, context '
        f"{ev.context_length}, stride {ev.stride}; {escape(ev.split)}. "
        "Latencies: median and p90 over repeated runs after warm-up, in a fresh process on "
        "the worker's device.</p>"
    )
    parts.append(unquantized_note(report))
    parts.append(failed_evaluations(report))
    parts.append(stage_table(report))
    parts.append(layer_error_section(report.layer_error))
    parts.append(memory_table(report))
    parts.append("<h2>Size against quality: your jobs on this model</h2>")
    parts.append(scatter(points, report.job_id))
    parts.append(generations_table(report.generations or []))
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts.extend(f"<li>{escape(w)}</li>" for w in report.warnings)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "".join(parts)


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


def unquantized_note(report: Report) -> str:
    storage = report.compressed.unquantized_tensors if report.compressed else None
    if not storage or not storage.tensors:
        return ""
    names = ", ".join(
        f"{escape(t.name)} ({t.parameters / 1e6:.1f}M {escape(t.dtype)})" for t in storage.largest
    )
    return (
        "<p>Floating-point tensors left unquantized: "
        f'<span data-key="compressed/unquantized_tensors/parameters" '
        f'data-value="{storage.parameters}">{fmt(storage.parameters, "count")}</span>'
        f" parameters in {storage.tensors} tensors; largest: {names}.</p>"
    )


def failed_evaluations(report: Report) -> str:
    failed = {k: v for k, v in report.evaluations.items() if v.status != "ok"}
    if not failed:
        return ""
    rows = "".join(
        f'<tr><th class="bad">{escape(key)}</th><td>{escape(str(value.error))}</td></tr>'
        for key, value in failed.items()
    )
    return f'<h2 class="bad">Evaluations that failed</h2><table>{rows}</table>'


def stage_table(report: Report) -> str:
    stages = report.stages
    if len(stages) <= 1:
        return ""
    parts = ["<h2>Stage by stage</h2><table><tr><th>stage</th><th>method</th>"]
    parts.append("<th>parameters</th><th>nonzero</th><th>perplexity after</th></tr>")
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        base = "compressed" if last else f"stages/{i}/metrics_after"
        after: StageMetrics | CompressedModel | None = (
            report.compressed if last else stage.metrics_after
        )
        parts.append(f"<tr><td>{i}</td><td>{escape(stage.method)}</td>")
        parts.append(cell(f"{base}/parameters", after.parameters if after else None, "count"))
        parts.append(
            cell(f"{base}/nonzero_parameters", after.nonzero_parameters if after else None, "count")
        )
        parts.append(cell(f"{base}/perplexity", after.perplexity if after else None) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def layer_error_section(errors: LayerError | None) -> str:
    if not errors:
        return ""
    parts = ["<h2>Per-layer error</h2>"]
    parts.append(f'<p class="muted">{escape(errors.method)}, {errors.tokens} tokens.</p>')
    parts.append(bar_chart(errors.layers))
    parts.append("<table><tr><th>most damaged layers</th><th>relative error</th></tr>")
    for i, row in enumerate(errors.most_damaged):
        parts.append(f"<tr><td><code>{escape(row.layer)}</code></td>")
        parts.append(
            cell(f"layer_error/most_damaged/{i}/relative_error", row.relative_error) + "</tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def memory_table(report: Report) -> str:
    """Each phase's time and measured peak memory, beside the plan made before loading."""
    memory = report.memory
    if memory is None or not memory.phases:
        return ""
    plan = memory.plan
    gpu = plan is not None and plan.device == "gpu"
    parts = ["<h2>Time and memory by phase</h2><table><tr><th>phase</th><th>seconds</th>"]
    parts.append("<th>peak RSS above the job's start</th><th>planned</th><th>CUDA peak</th>")
    parts.append("<th>planned (GPU)</th></tr>" if gpu else "</tr>")
    for name, figures in memory.phases.items():
        parts.append(f"<tr><td>{escape(name)}</td>")
        parts.append(cell(f"timings_s/{name}", report.timings_s.get(name)))
        key = f"memory/phases/{name}"
        planned = plan.phases.get(name) if plan else None
        parts.append(cell(f"{key}/peak_above_start_bytes", figures.peak_above_start_bytes, "bytes"))
        host = planned.host_bytes if planned else None
        parts.append(cell(f"memory/plan/phases/{name}/host_bytes", host, "bytes"))
        parts.append(cell(f"{key}/cuda_peak_bytes", figures.cuda_peak_bytes, "bytes"))
        if gpu:
            device = planned.device_bytes if planned else None
            parts.append(cell(f"memory/plan/phases/{name}/device_bytes", device, "bytes"))
        parts.append("</tr>")
    parts.append("</table>")
    reset = "" if memory.peak_reset_per_phase else " (peaks could not be reset between phases)"
    budget = fmt(report.estimate.available_bytes, "bytes")
    mode = f"mode {escape(plan.mode)}, " if plan else ""
    parts.append(
        f'<p class="muted">Planned before the weights loaded ({mode}checked against {budget})'
        f"{reset}.</p>"
    )
    return "".join(parts)


def generations_table(generations: list[Generation]) -> str:
    if not generations:
        return ""
    parts = ['<h2>Greedy generations</h2><table class="gen"><tr><th>prompt</th>']
    parts.append("<th>original</th><th>compressed</th></tr>")
    for row in generations:
        parts.append(
            f"<tr><td>{escape(row.prompt)}</td><td>{escape(str(row.original or '—'))}"
            f"</td><td>{escape(row.compressed)}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)
