"""Compress, then prove it: run the recipe's stages, save the artifact, load it back (an artifact
that does not load never ships) and measure it against the original."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from app.jobs.state import ErrorCode
from workers import metrics as worker_metrics
from workers.errors import JobFailure
from workers.evaluation import layer_error
from workers.evaluation.measure import (
    directory_bytes,
    greedy_generations,
    nonzero_parameter_count,
    parameter_count,
    quantized_weight_storage,
    unquantized_tensors,
    weight_bytes,
)
from workers.evaluation.suite import EvalPlan, evaluate
from workers.formats import gguf
from workers.formats.loader import PLAIN, artifact_format
from workers.job import gguf_outputs, progress
from workers.job.environment import load_model
from workers.job.evaluate import stage_metrics
from workers.job.run import JobRun
from workers.job.source import Source
from workers.methods.recipe import RecipeOutcome, run_stages, save_artifact
from workers.methods.shared.storage_dtype import compute_dtype
from workers.models.decompressed import open_artifact_offloaded

OFFLOADED_LOADER = "compressed_tensors decompress, module by module (disk-offloaded)"


@dataclass
class Compressed:
    """What the compress phase hands to the report and to publishing."""

    stage_notes: list[dict[str, Any]]
    save_format: str
    model_dir: Path
    metrics: dict[str, Any]
    load_check: dict[str, Any]
    layer_error: dict[str, Any] | None
    gguf_source: Path | None = None  # the dense model the job's output.gguf files convert


def compress(run: JobRun) -> Compressed:
    ctx, source = run.ctx, run.source
    captured = capture_layers(run)
    original_layers = int(getattr(source.model.config, "num_hidden_layers", 0))
    if not source.offloaded:  # an offloaded model already computes in that dtype
        source.model.to(compute_dtype(source.device))
    with ctx.timed("stages"):
        outcome, gguf_source = run_recipe(run)
    # Counted on the compressed model before saving: its weights are plain tensors here (a
    # reloaded quantized model holds packed integers, where counting elements means nothing).
    counts = (
        {key: outcome.stage_notes[-1][key] for key in ("parameters", "nonzero_parameters")}
        if outcome.layout == gguf.FORMAT  # the exporter freed the weights it packed
        else {
            "parameters": parameter_count(outcome.model),
            "nonzero_parameters": nonzero_parameter_count(outcome.model),
        }
    )
    ctx.progress("save", progress.SAVE.start)
    out_dir = run.scratch / "model"
    with ctx.timed("save"):
        save_artifact(
            outcome,
            source.tokenizer,
            out_dir,
            max_shard_bytes=run.job.spec.output.max_shard_bytes,
            offloaded=source.offloaded,
        )
    save_format, stage_notes = outcome.save_format, outcome.stage_notes
    source.release()  # the in-memory model goes before the artifact loads: one copy at a time
    del outcome
    gc.collect()
    measured = measure_artifact(run, out_dir, counts, stage_notes, captured, original_layers)
    return Compressed(stage_notes, save_format, out_dir, *measured, gguf_source)


def measure_artifact(
    run: JobRun,
    out_dir: Path,
    counts: dict[str, int],
    stage_notes: list[dict[str, Any]],
    captured: layer_error.Capture | None,
    original_layers: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Load the saved artifact as users will and measure it: (metrics, load check, per-layer
    error). The source model is released already."""
    ctx, source, attempts, plan = run.ctx, run.source, run.evaluations, run.plan
    ctx.progress("load_check", progress.LOAD_CHECK.start)
    with ctx.timed("load_check"):
        loaded, load_check, generations = check_loads(
            source, out_dir, plan, run.scratch / "load-check"
        )
    checkpoint_bytes = weight_bytes(out_dir)
    compressed: dict[str, Any] = {
        **counts,
        "checkpoint_bytes": checkpoint_bytes,
        "artifact_bytes": directory_bytes(out_dir),
        "weight_files": len([*out_dir.glob("*.safetensors"), *out_dir.glob("*.gguf")]),
        "effective_bits_per_parameter": round(8 * checkpoint_bytes / counts["parameters"], 4),
        "quantized_storage": quantized_weight_storage(out_dir),
        "unquantized_tensors": unquantized_tensors(out_dir),
        "generations": generations,
    }
    with ctx.timed("evaluate_compressed"):
        compressed.update(
            evaluate(
                ctx,
                attempts,
                "compressed",
                loaded,
                source.tokenizer,
                out_dir,
                plan,
                device=source.device,
                span=progress.EVALUATE_COMPRESSED.bounds,
                generations=False,
            )
        )
        errors = None
        if captured is not None:
            origin = layer_error.layer_origin(stage_notes, original_layers)
            if origin is None:
                ctx.warn("per-layer error skipped: the student is another model")
            else:
                errors = attempts.run(
                    "layer_error", partial(layer_error.measure, loaded, captured, origin)
                )
    del loaded
    return compressed, load_check, errors


def capture_layers(run: JobRun) -> layer_error.Capture | None:
    """The original's linear layers on calibration text, for the per-layer error after
    loading; offloaded, the activations wait on disk too (0.85 GB for a 1.1B model)."""
    if not (run.job.spec.evaluation.layer_error_tokens and run.data.layer_error_ids):
        return None
    source = run.source
    return run.evaluations.run(
        "layer_error.capture",
        partial(
            layer_error.capture,
            source.model,
            run.data.layer_error_ids,
            run.scratch / "layer-error" if source.offloaded else None,
        ),
    )


def run_recipe(run: JobRun) -> tuple[RecipeOutcome, Path | None]:
    """The stages in order, each timed and noted in the job's events; figures after every
    stage but the last (whose figures are the compressed model's, measured after loading).
    With `output.gguf`, also where the dense model those files convert from is."""
    ctx, job, plan = run.ctx, run.job, run.plan
    stages = job.stages
    started: dict[int, float] = {}
    wants_gguf = bool(job.spec.output.gguf)
    snapshot_after = gguf_outputs.snapshot_after(stages) if wants_gguf else None
    gguf_source = run.source.resolved.path if wants_gguf and snapshot_after is None else None
    per_stage = job.spec.evaluation.per_stage and plan.perplexity and len(stages) > 1

    def on_stage(index: int, name: str) -> None:
        ctx.progress(f"stage:{name}", progress.STAGES.at(index / len(stages)))
        ctx.fault_point("compression")
        started[index] = time.perf_counter()

    def on_stage_done(index: int, notes: dict[str, Any], current: torch.nn.Module) -> None:
        nonlocal gguf_source
        seconds = time.perf_counter() - started[index]
        ctx.timings[f"stage_{index}_{notes['method']}"] = round(seconds, 3)
        worker_metrics.phase_done("stage", seconds, None, method=notes["method"])
        if per_stage and index < len(stages) - 1:
            notes["metrics_after"] = stage_metrics(run, current, index)
        ctx.event("stage", f"stage {index} ({notes['method']}) done", notes)
        if index == snapshot_after:
            with ctx.timed("gguf_source"):
                gguf_source = gguf_outputs.save_snapshot(
                    current, run.source.tokenizer, run.scratch / gguf_outputs.SNAPSHOT
                )

    outcome = run_stages(
        run.source.model,
        run.source.tokenizer,
        stages,
        run.data.calibration_ids,
        ctx,
        on_stage,
        on_stage_done,
        source_path=run.source.resolved.path,
        eval_ids=plan.eval_ids,
        eval_context_length=plan.context_length,
        scratch=run.scratch,
        seed=job.spec.seed,
        progress_span=progress.STAGES.bounds,
    )
    return outcome, gguf_source


def loader_name(layout: str, *, offloaded: bool) -> str:
    if offloaded:
        return OFFLOADED_LOADER
    if layout == PLAIN:
        return "transformers.AutoModelForCausalLM.from_pretrained"
    if layout == gguf.FORMAT:
        return "transformers.AutoModelForCausalLM.from_pretrained(gguf_file=…), dequantized"
    return "squash.load_pretrained"


def check_loads(
    source: Source, out_dir: Path, plan: EvalPlan, scratch: Path
) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    """Load the artifact as users will and generate from it. Plain transformers loads it,
    unless its layout (sparse bitmask, low-rank) needs the loader the package ships: the
    report says which. Disk-offloaded, every quantized module is decompressed from the files
    by compressed-tensors (what transformers' load runs) into a dense copy opened offloaded."""
    started = time.perf_counter()
    layout = artifact_format(out_dir)
    try:
        if source.offloaded:
            loaded = open_artifact_offloaded(
                out_dir,
                scratch,
                onload_device=source.device,
                dtype=compute_dtype(source.device),
            )
        else:
            loaded = load_model(out_dir, source.device)
        generations = greedy_generations(
            loaded, source.tokenizer, plan.prompts, plan.max_new_tokens
        )
    except Exception as exc:
        raise JobFailure(ErrorCode.LOAD_CHECK_FAILED, f"artifact does not load: {exc}") from exc
    load_check = {
        "ok": True,
        "artifact_format": layout,
        "loader": loader_name(layout, offloaded=source.offloaded),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return loaded, load_check, generations
