"""report.html: one self-contained page per job, rendered from report.json.

Jinja2 with autoescape (`app/reports/templates/report.html.j2`) and matplotlib's SVG inlined
(`app/reports/charts.py`): no script, no font, no image file, and a Content-Security-Policy that
forbids loading anything, so the page opens offline and leaks no request. Every figure taken
from report.json carries `data-key` (its path in report.json) and `data-value` (the JSON value),
so a test can check that the page says what the report says (`app/reports/page_cells.py`).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from markupsafe import Markup

from app.reports.charts import layer_error_chart, scatter_chart, summarize_layers
from app.reports.csp import CSP
from app.reports.page_cells import REGRESSION_PCT, cell, fmt, measured_sides, metric_rows
from app.reports.points import Point, set_params
from app.reports.schema import (
    CompressedModel,
    CompressSummary,
    LayerError,
    Report,
    StageMetrics,
)
from app.reports.search_page import search_section

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eef;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#667}.bad{color:#b3261e}.ok{color:#1a7f37}code{font-size:12px}.set{font-weight:600}
td.params{font-family:ui-monospace,monospace;font-size:12px;max-width:520px}
.gen td{max-width:340px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
svg{max-width:100%;height:auto}
"""


@cache
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("app.reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2")


def render(
    report: Report, points: list[Point], artifacts: list[dict[str, Any]] | None = None
) -> str:
    """The page. `points`: the original and the tenant's jobs on the same base model measured
    alike (app/reports/points.py), this one included; `artifacts`: the model files as
    uploaded (path, size, sha256)."""
    sides = measured_sides(report)
    rows = metric_rows(sides)
    heads = ["model"] if report.evaluate_only else [*sides]
    deltas = any(row["delta"] is not None for row in rows)
    if deltas:
        heads.append("change")
    efficiencies = [m.efficiency for m in sides.values() if m.efficiency]
    return str(
        _template().render(
            csp=CSP,
            style=STYLE,
            title={"evaluate": "Evaluation report", "search": "Search report"}.get(
                report.kind, "Compression report"
            ),
            job_id=report.job_id,
            device=report.device_name or report.device,
            version=report.version,
            model=model_facts(report),
            headline=headline(report),
            recipe=recipe_rows(report),
            heads=heads,
            metric_rows=rows,
            deltas=deltas,
            regression_pct=REGRESSION_PCT,
            evaluation=report.evaluation,
            efficiency_notes=sorted({f"runtime {e.runtime}" for e in efficiencies}),
            runtime_notes=sorted({e.runtime_note for e in efficiencies if e.runtime_note}),
            unquantized=unquantized(report),
            failed=[(k, v.error) for k, v in report.evaluations.items() if v.status != "ok"],
            load_check=load_check(report),
            gguf_outputs=gguf_rows(report),
            search=search_section(report.search),
            stage_rows=stage_rows(report),
            layers=layer_section(report.layer_error),
            **timing_context(report),
            memory=memory_context(report),
            scatter=Markup(scatter_chart(points, report.job_id)),
            generations=report.generations or [],
            artifacts=[
                {"path": a["path"], "size": fmt(a["size"], "bytes"), "sha256": a["sha256"]}
                for a in artifacts or []
            ],
            warnings=report.warnings,
            libraries=sorted(report.libraries.items()),
        )
    )


def headline(report: Report) -> dict[str, Any] | None:
    summary = report.summary
    if not isinstance(summary, CompressSummary):
        return None
    change = summary.perplexity_change_pct
    return {
        "ratio": cell("summary/compression_ratio", summary.compression_ratio),
        "change": cell("summary/perplexity_change_pct", change, "pct"),
        "change_class": "bad" if change is not None and change > REGRESSION_PCT else "",
    }


def unquantized(report: Report) -> dict[str, Any] | None:
    storage = report.compressed.unquantized_tensors if report.compressed else None
    if not storage or not storage.tensors:
        return None
    return {
        "parameters": storage.parameters,
        "text": fmt(storage.parameters, "count"),
        "tensors": storage.tensors,
        "largest": ", ".join(
            f"{t.name} ({t.parameters / 1e6:.1f}M {t.dtype})" for t in storage.largest
        ),
    }


def load_check(report: Report) -> dict[str, Any] | None:
    check = report.load_check
    if check is None:
        return None
    return {
        "ok": check.ok,
        "loader": check.loader,
        "format": check.artifact_format,
        "seconds": cell("load_check/seconds", check.seconds),
    }


def gguf_rows(report: Report) -> list[dict[str, Any]]:
    """The GGUF files beside the artifact; a perplexity change above REGRESSION_PCT marked."""
    rows = []
    for i, out in enumerate(report.gguf_outputs or []):
        change = out.perplexity_change_pct
        rows.append(
            {
                "type": out.type,
                "path": out.path,
                "imatrix": "yes" if out.imatrix else "no",
                "size": cell(f"gguf_outputs/{i}/bytes", out.bytes, "bytes"),
                "bits": cell(f"gguf_outputs/{i}/bits_per_weight", out.bits_per_weight),
                "types": ", ".join(f"{k} {v}" for k, v in out.tensor_types.items()),
                "perplexity": cell(f"gguf_outputs/{i}/perplexity", out.perplexity),
                "change": cell(f"gguf_outputs/{i}/perplexity_change_pct", change, "pct"),
                "change_class": "bad" if change is not None and change > REGRESSION_PCT else "",
            }
        )
    return rows


def stage_rows(report: Report) -> list[dict[str, Any]]:
    stages = report.stages
    if len(stages) <= 1:
        return []
    rows = []
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        base = "compressed" if last else f"stages/{i}/metrics_after"
        after: StageMetrics | CompressedModel | None = (
            report.compressed if last else stage.metrics_after
        )
        rows.append(
            {
                "index": i,
                "method": stage.method,
                "cells": [
                    cell(f"{base}/parameters", after.parameters if after else None, "count"),
                    cell(
                        f"{base}/nonzero_parameters",
                        after.nonzero_parameters if after else None,
                        "count",
                    ),
                    cell(f"{base}/perplexity", after.perplexity if after else None),
                ],
            }
        )
    return rows


def layer_section(errors: LayerError | None) -> dict[str, Any] | None:
    if not errors:
        return None
    found = summarize_layers(errors.layers)
    if found is None:
        sentence = "No layer was comparable."
    else:
        means = ", ".join(f"{k} {v:.3g}" for k, v in list(found.by_type.items())[:4])
        sentence = (
            f"Most damaged: {found.worst_type}, {found.worst_type_share} of the "
            f"{found.worst_count} layers with the largest error; the worst is "
            f"{found.worst_layer} ({found.worst_error:.3g}). Mean error by layer type: {means}."
        )
    return {
        "sentence": sentence,
        "chart": Markup(layer_error_chart(errors.layers)),
        "method": errors.method,
        "tokens": errors.tokens,
        "worst": [
            (row.layer, cell(f"layer_error/most_damaged/{i}/relative_error", row.relative_error))
            for i, row in enumerate(errors.most_damaged)
        ],
    }


def timing_context(report: Report) -> dict[str, Any]:
    """Each phase as measured, the estimate's parts, and a sentence comparing the totals."""
    timings = [
        (name, cell(f"timings_s/{name}", seconds))
        for name, seconds in report.timings_s.items()
        if not name.startswith("stage_")  # inside "stages"
    ]
    measured = sum(c.value for _, c in timings)
    estimate = report.estimate
    ratio = measured / estimate.seconds if estimate.seconds else None
    sentence = (
        f"Measured {measured:,.1f} s in all, against {estimate.seconds:,.1f} s estimated "
        f"before the work (x{ratio:.2f})."
        if ratio
        else "No estimate was made."
    )
    return {
        "timings": timings,
        "estimate_rows": [
            (name, cell(f"estimate/breakdown_s/{name}", seconds))
            for name, seconds in estimate.breakdown_s.items()
        ],
        "estimate_total": cell("estimate/seconds", estimate.seconds),
        "estimate_sentence": sentence,
    }


def model_facts(report: Report) -> dict[str, str]:
    source = report.model.source
    kind = str(source.get("kind", "?"))
    name = {
        "builtin": source.get("name"),
        "huggingface": f"{source.get('repo_id')}@{source.get('revision', 'main')}",
        "local": source.get("path"),
        "s3": source.get("uri"),
    }.get(kind) or json.dumps(source)
    return {
        "kind": kind,
        "name": str(name),
        "architecture": report.model.architecture,
        "sha": report.model.weights_sha256[:12],
    }


def recipe_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for index, stage in enumerate(report.recipe):
        params = [
            (name, value if isinstance(value, str) else json.dumps(value), changed)
            for name, value, changed in set_params(stage.method, stage.params)
        ]
        notes = report.stages[index].model_extra if index < len(report.stages) else None
        noted = [
            (k, v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))[:120])
            for k, v in (notes or {}).items()
        ]
        rows.append({"method": stage.method, "params": params, "notes": noted})
    return rows


def memory_context(report: Report) -> dict[str, Any] | None:
    """Each phase's time and measured peak memory, beside the plan made before loading."""
    memory = report.memory
    if memory is None or not memory.phases:
        return None
    plan = memory.plan
    gpu = plan is not None and plan.device == "gpu"
    rows = []
    for name, figures in memory.phases.items():
        key = f"memory/phases/{name}"
        planned = plan.phases.get(name) if plan else None
        cells = [
            cell(f"timings_s/{name}", report.timings_s.get(name)),
            cell(f"{key}/peak_above_start_bytes", figures.peak_above_start_bytes, "bytes"),
            cell(
                f"memory/plan/phases/{name}/host_bytes",
                planned.host_bytes if planned else None,
                "bytes",
            ),
            cell(f"{key}/cuda_peak_bytes", figures.cuda_peak_bytes, "bytes"),
        ]
        if gpu:
            device = planned.device_bytes if planned else None
            cells.append(cell(f"memory/plan/phases/{name}/device_bytes", device, "bytes"))
        rows.append((name, cells))
    reset = "" if memory.peak_reset_per_phase else " (peaks could not be reset between phases)"
    budget = fmt(report.estimate.available_bytes, "bytes")
    mode = f"mode {plan.mode}, " if plan else ""
    return {
        "gpu": gpu,
        "rows": rows,
        "note": f"Planned before the weights loaded ({mode}checked against {budget}){reset}.",
    }
