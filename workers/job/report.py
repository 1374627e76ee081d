"""The report and the job summary, filled from what the job measured (app/reports/schema.py
holds their types; this module only assembles them)."""

from __future__ import annotations

from typing import Any

from app.reports.schema import (
    REPORT_VERSION,
    CompressSummary,
    EvaluateSummary,
    Headline,
    Report,
)
from workers.job.compress import Compressed
from workers.job.environment import device_name, library_versions
from workers.job.run import JobRun
from workers.methods.estimate import Estimate
from workers.models.datasets import CALIBRATION_SHARE


def compress_report(
    run: JobRun,
    common: dict[str, Any],
    original: dict[str, Any],
    compressed: Compressed,
    *,
    gguf_rows: list[dict[str, Any]] | None = None,
) -> Report:
    metrics = compressed.metrics
    note = slower_runtime_note(original, metrics, compressed.save_format)
    if note:  # beside a note the probe already wrote (a GGUF measured in transformers)
        earlier = metrics["efficiency"].get("runtime_note")
        metrics["efficiency"]["runtime_note"] = f"{earlier}; {note}" if earlier else note
        run.ctx.warn(note)
    prompts = run.plan.prompts
    generations = side_by_side(prompts, original.get("generations"), metrics["generations"])
    return Report.model_validate(
        {
            **common,
            "kind": "compress",
            "stages": compressed.stage_notes,
            "format": compressed.save_format,
            "original": original,
            "compressed": metrics,
            "generations": generations,
            "layer_error": compressed.layer_error,
            "load_check": compressed.load_check,
            **({"gguf_outputs": gguf_rows} if gguf_rows else {}),
            "summary": summary(original, metrics, common["model"], measured_on(common)),
            **closing(run),
        }
    )


def slower_runtime_note(
    original: dict[str, Any], compressed: dict[str, Any], save_format: str
) -> str | None:
    """Say plainly when the artifact serves slower than the original in the runtime measured:
    transformers unpacks compressed-tensors weights in every forward (what vLLM's kernels do
    not), so on CPU a smaller model decodes slower there."""
    mine, theirs = compressed.get("efficiency"), original.get("efficiency")
    if not mine or not theirs or mine.get("runtime") != theirs.get("runtime"):
        return None
    ratio = theirs["decode_tokens_per_second_b1"] / mine["decode_tokens_per_second_b1"]
    if ratio <= 1.1:
        return None
    where = (
        "transformers unpacks compressed-tensors weights in every forward; the format is made "
        "for vLLM on a GPU, whose kernels read the packed integers directly"
        if save_format == "compressed-tensors"
        else "the format's speed-up needs a runtime with kernels for it"
    )
    return (
        f"decodes {ratio:.1f}x slower than the original in {mine.get('runtime', 'transformers')} "
        f"on {mine.get('device', 'this device')}: {where}"
    )


def evaluate_report(run: JobRun, common: dict[str, Any], measured: dict[str, Any]) -> Report:
    return Report.model_validate(
        {
            **common,
            "kind": "evaluate",
            "model_metrics": measured,
            "stages": [],
            "summary": evaluate_summary(measured, common["model"], measured_on(common)),
            **closing(run),
        }
    )


def common_fields(run: JobRun, estimate: Estimate) -> dict[str, Any]:
    """What every report starts with: the job, its model, its settings and the estimate."""
    job, data, plan, device = run.job, run.data, run.plan, run.source.device
    return {
        "version": REPORT_VERSION,
        "job_id": str(run.ctx.job_id),
        "model": run.source.resolved.provenance,
        "recipe": [stage.model_dump(mode="json") for stage in job.spec.recipe],
        "seed": job.spec.seed,
        "device": str(device),
        "device_name": device_name(device),
        "evaluation": {
            "dataset": data.eval_corpus.name,
            "dataset_sha256": data.eval_corpus.sha256,
            "split": f"tokens after the first {CALIBRATION_SHARE:.0%} of the corpus "
            "(calibration uses only the first part: disjoint)",
            "overlap_with_calibration": data.overlap,
            "tokens": len(plan.eval_ids),
            "context_length": plan.context_length,
            "stride": plan.stride,
            "tasks": plan.tasks,
            "efficiency": plan.efficiency,
        },
        "estimate": estimate.as_json(),
    }


def closing(run: JobRun) -> dict[str, Any]:
    """What every report ends with: what ran, what it warned, how long it took, on what."""
    memory = {"memory": run.ctx.memory.as_json()} if run.ctx.memory else {}
    return {
        **memory,
        "evaluations": run.evaluations.status,
        "warnings": run.ctx.warnings,
        "timings_s": run.ctx.timings,
        "libraries": library_versions(),
    }


def side_by_side(
    prompts: list[str], original: list[str] | None, compressed: list[str]
) -> list[dict[str, str | None]]:
    return [
        {
            "prompt": prompt,
            "original": original[i] if original else None,
            "compressed": compressed[i],
        }
        for i, prompt in enumerate(prompts)
    ]


def headline(measured: dict[str, Any]) -> dict[str, Any]:
    """The figures /v1/compare and the job's `metrics` show for one model."""
    out: dict[str, Any] = {}
    if "perplexity" in measured:
        out["perplexity"] = round(measured["perplexity"], 4)
    efficiency = measured.get("efficiency") or {}
    for key in ("decode_tokens_per_second_b1", "throughput_tokens_per_second"):
        if key in efficiency:
            out[key] = efficiency[key]
    if "ttft_ms" in efficiency:
        out["ttft_ms"] = efficiency["ttft_ms"]["median"]
    if "peak_memory_bytes" in efficiency:
        out["peak_memory_bytes"] = efficiency["peak_memory_bytes"]
    for task, result in (measured.get("tasks") or {}).items():
        for metric, value in result["metrics"].items():
            out[f"{task}.{metric}"] = round(value, 4)
    return Headline.model_validate(out).to_json()


def measured_on(common: dict[str, Any]) -> dict[str, Any]:
    evaluation = common["evaluation"]
    keys = ("dataset_sha256", "tokens", "context_length", "stride")
    return {**{key: evaluation[key] for key in keys}, "device": common["device_name"]}


def summary(
    original: dict[str, Any],
    compressed: dict[str, Any],
    model: dict[str, Any],
    settings: dict[str, Any],
) -> CompressSummary:
    result: dict[str, Any] = {
        "base_model": model["weights_sha256"],
        "measured_on": settings,
        "original_checkpoint_bytes_bf16": original["checkpoint_bytes_bf16"],
        "compressed_checkpoint_bytes": compressed["checkpoint_bytes"],
        "compression_ratio": round(
            original["checkpoint_bytes_bf16"] / compressed["checkpoint_bytes"], 4
        ),
        "parameters": compressed["parameters"],
        "nonzero_parameters": compressed["nonzero_parameters"],
        "effective_bits_per_parameter": compressed["effective_bits_per_parameter"],
    }
    storage = compressed.get("quantized_storage") or {}
    if storage.get("quantized_layers"):
        result["bits_per_quantized_weight"] = storage["bits_per_weight"]
    if "perplexity" in original:
        result["original_perplexity"] = round(original["perplexity"], 4)
    if "perplexity" in compressed:
        result["compressed_perplexity"] = round(compressed["perplexity"], 4)
    if "perplexity" in original and "perplexity" in compressed:
        result["perplexity_change_pct"] = round(
            100 * (compressed["perplexity"] / original["perplexity"] - 1), 3
        )
    result["compressed"] = headline(compressed)
    result["original"] = headline(original)
    return CompressSummary.model_validate(result)


def evaluate_summary(
    measured: dict[str, Any], model: dict[str, Any], settings: dict[str, Any]
) -> EvaluateSummary:
    """An evaluate job's metrics: the model as it is, in the shape /v1/compare reads."""
    return EvaluateSummary.model_validate(
        {
            "base_model": model["weights_sha256"],
            "measured_on": settings,
            "checkpoint_bytes_bf16": measured["checkpoint_bytes_bf16"],
            "parameters": measured["parameters"],
            "nonzero_parameters": measured["nonzero_parameters"],
            "evaluated": headline(measured),
        }
    )
