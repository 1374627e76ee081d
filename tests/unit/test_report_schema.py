"""The typed report: what /v1/compare and the HTML page read, by attribute, from the models
that the worker fills (fast checks; tests/integration/test_reports.py checks a worker's real
report against the published schema)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
from pydantic import ValidationError

from app.reports.compare import row_metrics
from app.reports.html import render
from app.reports.points import point_of
from app.reports.schema import CompressSummary, EvaluateSummary, Report, parse_summary
from tests.support.reports import typed_value, validate_against_published_schema

SPREAD = {"median": 2.5, "p90": 3.0, "runs": 2}
EFFICIENCY = {
    "ttft_ms": SPREAD,
    "decode_ms_per_token_b1": SPREAD,
    "decode_tokens_per_second_b1": 400.0,
    "decode_ms_per_step_b2": SPREAD,
    "batch_size": 2,
    "throughput_tokens_per_second": 700.0,
    "prompt_tokens": 16,
    "new_tokens": 4,
    "warmup": 2,
    "repetitions": 2,
    "peak_memory_bytes": 1000,
    "memory_measure": "peak RSS",
    "load_seconds": 0.1,
    "device": "cpu",
    "dtype": "float32",
    "threads": 2,
}
TASKS = {"mine": {"metrics": {"acc": 0.5, "acc_norm": 0.25}, "samples": 12}}


def summary() -> dict[str, Any]:
    return {
        "base_model": "ab" * 32,
        "original_checkpoint_bytes_bf16": 2000,
        "compressed_checkpoint_bytes": 800,
        "compression_ratio": 2.5,
        "parameters": 1000,
        "nonzero_parameters": 990,
        "effective_bits_per_parameter": 6.4,
        "bits_per_quantized_weight": 4.25,
        "original_perplexity": 10.0,
        "compressed_perplexity": 11.0,
        "perplexity_change_pct": 10.0,
        "compressed": {"perplexity": 11.0, "ttft_ms": 2.5, "mine.acc": 0.5},
        "original": {"perplexity": 10.0, "mine.acc": 0.75},
    }


def report() -> dict[str, Any]:
    measured = {
        "parameters": 1000,
        "nonzero_parameters": 990,
        "perplexity": 11.0,
        "tasks": TASKS,
        "efficiency": EFFICIENCY,
    }
    return {
        "version": 3,
        "job_id": "00000000-0000-0000-0000-000000000001",
        "kind": "compress",
        "model": {
            "source": {"kind": "local", "path": "m"},
            "weights_sha256": "ab" * 32,
            "architecture": "LlamaForCausalLM",
        },
        "recipe": [{"method": "magnitude", "params": {}}, {"method": "rtn", "params": {}}],
        "seed": 0,
        "device": "cpu",
        "device_name": "cpu:x86_64:2threads",
        "evaluation": {
            "dataset": "pydoc-topics",
            "dataset_sha256": "cd" * 32,
            "split": "held out",
            "overlap_with_calibration": {
                "window": 32,
                "evaluation_windows": 10,
                "shared_windows": 0,
                "calibration_tokens_checked": 64,
            },
            "tokens": 2048,
            "context_length": 128,
            "stride": 128,
            "tasks": [],
            "efficiency": None,
        },
        "estimate": {
            "memory_bytes": 1,
            "available_bytes": None,
            "seconds": 1.0,
            "device_gflops": 1.0,
            "breakdown_s": {},
        },
        "stages": [
            {
                "method": "magnitude",
                "measured_sparsity": 0.5,
                "metrics_after": {
                    "parameters": 1000,
                    "nonzero_parameters": 500,
                    "perplexity": 10.5,
                },
            },
            {"method": "rtn", "quantized_layers": 4},
        ],
        "format": "compressed-tensors",
        "original": {
            **measured,
            "checkpoint_bytes_bf16": 2000,
            "perplexity": 10.0,
            "effective_bits_per_parameter": 16.0,
        },
        "compressed": {
            **measured,
            "checkpoint_bytes": 800,
            "artifact_bytes": 900,
            "effective_bits_per_parameter": 6.4,
            "unquantized_tensors": {
                "tensors": 1,
                "parameters": 100,
                "largest": [{"name": "embed", "parameters": 100, "dtype": "BF16"}],
            },
            "generations": ["x"],
        },
        "generations": [{"prompt": "p", "original": None, "compressed": "x"}],
        "layer_error": {
            "tokens": 64,
            "method": "relative error",
            "layers": [
                {"layer": "l.0", "status": "ok", "compressed_layer": "l.0", "relative_error": 0.1}
            ],
            "most_damaged": [{"layer": "l.0", "relative_error": 0.1}],
            "mean_relative_error": 0.1,
            "counts": {"ok": 1, "removed": 0, "reshaped": 0},
        },
        "load_check": {
            "ok": True,
            "artifact_format": "transformers",
            "loader": "x",
            "seconds": 0.5,
        },
        "summary": summary(),
        "evaluations": {"compressed.task:broken": {"status": "failed", "error": "line 1"}},
        "warnings": ["w"],
        "memory": {
            "start_rss_bytes": 600_000_000,
            "peak_reset_per_phase": True,
            "phases": {
                "stages": {"peak_rss_bytes": 900_000_000, "peak_above_start_bytes": 300_000_000}
            },
        },
        "timings_s": {"resolve": 0.1, "stages": 2.5},
        "libraries": {"torch": "2.13.0"},
    }


class DataCells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-key" in found:
            self.cells[found["data-key"] or ""] = found.get("data-value") or ""


def test_report_round_trips_and_validates_against_the_published_schema() -> None:
    raw = report()
    typed = Report.model_validate(raw)
    assert typed.to_json() == raw  # absent stays absent, nothing added
    validate_against_published_schema(raw)
    with pytest.raises(ValidationError):  # a renamed figure is refused, not carried along
        Report.model_validate({**raw, "compressed": {**raw["compressed"], "ppl": 1.0}})


def test_every_figure_on_the_page_is_a_typed_field() -> None:
    typed = Report.model_validate(report())
    parser = DataCells()
    parser.feed(render(typed, []))
    assert len(parser.cells) >= 25
    for key, value in parser.cells.items():
        assert json.loads(value) == typed_value(typed, key), key
    # Stage rows, tasks, efficiency and the summary all made it onto the page.
    for key in (
        "stages/0/metrics_after/perplexity",
        "compressed/tasks/mine/metrics/acc",
        "original/efficiency/ttft_ms/p90",
        "summary/compression_ratio",
        "memory/phases/stages/peak_above_start_bytes",
        "timings_s/stages",
    ):
        assert key in parser.cells


def test_compare_rows_come_from_typed_summary_fields() -> None:
    compress = parse_summary(summary())
    assert isinstance(compress, CompressSummary)
    assert row_metrics(compress) == {
        "size_bytes": 800,
        "parameters": 1000,
        "nonzero_parameters": 990,
        "compression_ratio": 2.5,
        "effective_bits_per_parameter": 6.4,
        "perplexity": 11.0,
        "ttft_ms": 2.5,
        "mine.acc": 0.5,
    }
    evaluate = parse_summary(
        {
            "base_model": "ab" * 32,
            "checkpoint_bytes_bf16": 2000,
            "parameters": 1000,
            "nonzero_parameters": 1000,
            "evaluated": {"perplexity": 10.0},
        }
    )
    assert isinstance(evaluate, EvaluateSummary)
    assert row_metrics(evaluate)["size_bytes"] == 2000
    stages = [{"method": "rtn", "params": {"bits": 8, "group_size": None, "symmetric": True}}]
    point = point_of("j", stages, compress)
    assert point is not None and (point.bytes, point.perplexity) == (800, 11.0)
    # The label names the parameters that differ from the method's defaults.
    assert point.label == "rtn(bits=8, group_size=null)"
    with pytest.raises(ValidationError):  # a task metric must be a number
        parse_summary({**summary(), "compressed": {"mine.acc": "high"}})


def test_the_change_column_marks_regressions_by_which_way_is_better() -> None:
    from app.reports.page_cells import Cell, delta

    def pair(before: float, after: float) -> list[Cell]:
        return [Cell("a", before, ""), Cell("b", after, "")]

    assert delta("perplexity", pair(10.0, 10.5)) == {"text": "+5.0 % ▲ worse", "cls": "bad"}
    assert delta("efficiency/decode_tokens_per_second_b1", pair(8.8, 2.8))["cls"] == "bad"
    assert delta("size", pair(269.0, 113.0))["text"].endswith("▼ better")
    assert delta("tasks/mine/metrics/acc", pair(0.5, 0.4))["cls"] == "bad"
    assert delta("perplexity", pair(10.0, 10.05))["cls"] == ""  # within 1 %
    assert delta("parameters", pair(100.0, 50.0))["cls"] == ""  # neither way is better
    assert delta("perplexity", pair(10.0, None)) is None  # type: ignore[arg-type]
