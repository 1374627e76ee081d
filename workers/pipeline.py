"""The body of a job: everything between claim and finish, with progress and check points.

Progress budget: resolve 0-10, original evaluation 10-35, stages 35-60, save + load check 60-70,
compressed evaluation 70-90, upload 90-100.
"""

from __future__ import annotations

import gc
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from app.jobs.state import ErrorCode
from workers.context import JobContext
from workers.errors import JobFailure
from workers.evaluation.measure import (
    directory_bytes,
    greedy_generations,
    nonzero_parameter_count,
    parameter_count,
    quantized_weight_storage,
    saved_checkpoint_bytes,
    weight_bytes,
)
from workers.evaluation.perplexity import perplexity
from workers.formats.loader import PLAIN, artifact_format, load_pretrained
from workers.models.datasets import CALIBRATION_SHARE, load_corpus, split_tokens
from workers.models.sources import resolve_model
from workers.pipelines.estimate import Estimate, estimate_job
from workers.pipelines.recipe import (
    STORAGE_DTYPE,
    needs_calibration,
    parse_stages,
    preflight,
    run_stages,
    save_artifact,
)
from workers.pipelines.storage_dtype import compute_dtype
from workers.publish import publish

REPORT_VERSION = 1
# The memory estimate is first-order: refuse only when it exceeds what is free by this factor.
MEMORY_REFUSE_FACTOR = 1.5
LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors")


def pick_device(preference: str) -> torch.device:
    if preference == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(path: Path, device: torch.device) -> torch.nn.Module:
    """Any model or artifact directory, float32, on `device` (the one loader users get too)."""
    return load_pretrained(path).to(device).eval()


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in LIBRARIES} | {"python": platform.python_version()}


def execute(
    ctx: JobContext, spec: dict[str, Any], *, device_pref: str, scratch: Path
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    torch.manual_seed(spec.get("seed", 0))
    device = pick_device(device_pref)
    scratch.mkdir(parents=True, exist_ok=True)
    evaluation = spec["evaluation"]
    stages = spec["recipe"]

    ctx.progress("resolve", 1)
    with ctx.timed("resolve"):
        resolved = resolve_model(spec["model"], ctx.settings, scratch)
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path))
        try:
            model = load_model(resolved.path, device)
        except Exception as exc:
            raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not load: {exc}") from exc
    ctx.event(
        "info",
        f"model loaded on {device}",
        {"architecture": resolved.provenance.get("architecture")},
    )

    # Validate every stage against the real model before any heavy work.
    parsed = parse_stages(stages)
    for warning in preflight(model, parsed):
        ctx.warn(warning)
    ctx.progress("prepare_data", 8)

    eval_corpus = load_corpus(evaluation["dataset"], ctx.settings)
    _, eval_pool = split_tokens(tokenizer(eval_corpus.text)["input_ids"])
    eval_ids = eval_pool[: evaluation["max_tokens"]]
    context_length, stride = (
        evaluation["context_length"],
        evaluation["stride"] or evaluation["context_length"],
    )
    calibration_ids: list[list[int]] = []
    calibration_hash = None
    if needs_calibration(parsed):
        cal_spec = spec["calibration"]
        cal_corpus = load_corpus(cal_spec["dataset"], ctx.settings)
        cal_pool, _ = split_tokens(tokenizer(cal_corpus.text)["input_ids"])
        length = cal_spec["max_seq_length"]
        calibration_ids = [
            cal_pool[i : i + length] for i in range(0, len(cal_pool) - length + 1, length)
        ][: cal_spec["num_samples"]]
        calibration_hash = cal_corpus.sha256

    estimate = estimate_job(
        model,
        parsed,
        calibration_samples=len(calibration_ids),
        calibration_length=max((len(c) for c in calibration_ids), default=0),
        eval_tokens=int(len(eval_ids) * context_length / stride) if evaluation["perplexity"] else 0,
        evaluate_original=evaluation["compare_original"],
        device=device,
        dtype=compute_dtype(device),
    )
    ctx.event("info", "estimated resources", estimate.as_json())
    check_memory(ctx, estimate)

    def ppl(target: torch.nn.Module, stage: str, start: float, span: float) -> dict[str, Any]:
        def tick(done: int, total: int) -> None:
            ctx.progress(stage, start + span * done / total)

        result = perplexity(
            target, eval_ids, context_length=context_length, stride=stride, on_window=tick
        )
        return {
            "perplexity": result.perplexity,
            "nll_mean": result.nll_mean,
            "scored_tokens": result.scored_tokens,
            "windows": result.windows,
        }

    original: dict[str, Any] = {
        "parameters": parameter_count(model),
        "nonzero_parameters": nonzero_parameter_count(model),
    }
    with ctx.timed("evaluate_original"):
        if evaluation["compare_original"]:
            if evaluation["perplexity"]:
                original.update(ppl(model, "evaluate_original", 10, 20))
            original["generations"] = greedy_generations(
                model, tokenizer, evaluation["prompts"], evaluation["max_new_tokens"]
            )
    ctx.progress("evaluate_original", 35)

    # The original's size is measured in the 16-bit storage dtype of every artifact: a float32
    # save would inflate every ratio.
    original["checkpoint_bytes_bf16"] = saved_checkpoint_bytes(model, STORAGE_DTYPE)
    model.to(compute_dtype(device))

    stage_started: dict[int, float] = {}

    def on_stage(index: int, name: str) -> None:
        ctx.progress(f"stage:{name}", 35 + 25 * index / len(parsed))
        stage_started[index] = time.perf_counter()

    def on_stage_done(index: int, notes: dict[str, Any]) -> None:
        seconds = time.perf_counter() - stage_started[index]
        ctx.timings[f"stage_{index}_{notes['method']}"] = round(seconds, 3)
        ctx.event("stage", f"stage {index} ({notes['method']}) done", notes)

    with ctx.timed("stages"):
        outcome = run_stages(
            model,
            tokenizer,
            parsed,
            calibration_ids,
            ctx,
            on_stage,
            on_stage_done,
            source_path=resolved.path,
            eval_ids=eval_ids,
            eval_context_length=context_length,
            scratch=scratch,
            seed=spec.get("seed", 0),
            progress_span=(35.0, 60.0),
        )
    save_format, stage_notes = outcome.save_format, outcome.stage_notes
    # Counted on the compressed model before saving: its weights are plain tensors here (a
    # reloaded quantized model holds packed integers, where counting elements means nothing).
    counts = {
        "parameters": parameter_count(outcome.model),
        "nonzero_parameters": nonzero_parameter_count(outcome.model),
    }

    ctx.progress("save", 60)
    out_dir = scratch / "model"
    with ctx.timed("save"):
        save_artifact(outcome, tokenizer, out_dir)
    del model, outcome
    gc.collect()

    # An artifact that does not load never ships. Plain transformers loads it, unless its layout
    # (sparse bitmask, low-rank) needs the loader the package ships: the report says which.
    ctx.progress("load_check", 65)
    started = time.perf_counter()
    layout = artifact_format(out_dir)
    try:
        loaded = load_model(out_dir, device)
        generations = greedy_generations(
            loaded, tokenizer, evaluation["prompts"], evaluation["max_new_tokens"]
        )
    except Exception as exc:
        raise JobFailure(ErrorCode.LOAD_CHECK_FAILED, f"artifact does not load: {exc}") from exc
    load_check = {
        "ok": True,
        "artifact_format": layout,
        "loader": "transformers.AutoModelForCausalLM.from_pretrained"
        if layout == PLAIN
        else "squash.load_pretrained",
        "seconds": round(time.perf_counter() - started, 3),
    }

    compressed: dict[str, Any] = {
        **counts,
        "checkpoint_bytes": weight_bytes(out_dir),
        "artifact_bytes": directory_bytes(out_dir),
        "quantized_storage": quantized_weight_storage(out_dir),
        "generations": generations,
    }
    with ctx.timed("evaluate_compressed"):
        if evaluation["perplexity"]:
            compressed.update(ppl(loaded, "evaluate_compressed", 70, 20))
    ctx.progress("upload", 90)

    metrics = summary(original, compressed)
    report = {
        "version": REPORT_VERSION,
        "job_id": str(ctx.job_id),
        "model": resolved.provenance,
        "recipe": stages,
        "stages": stage_notes,
        "device": str(device),
        "format": save_format,
        "evaluation": {
            "dataset": eval_corpus.name,
            "dataset_sha256": eval_corpus.sha256,
            "split": f"tokens after the first {CALIBRATION_SHARE:.0%} of the corpus "
            "(calibration uses only the first part: disjoint)",
            "tokens": len(eval_ids),
            "context_length": context_length,
            "stride": stride,
        },
        "original": original,
        "compressed": compressed,
        "summary": metrics,
        "load_check": load_check,
        "warnings": ctx.warnings,
        "estimate": estimate.as_json(),
        "timings_s": ctx.timings,
        "libraries": library_versions(),
    }
    provenance = {
        "model": resolved.provenance,
        "calibration_sha256": calibration_hash,
        "evaluation_sha256": eval_corpus.sha256,
        "recipe": stages,
        "seed": spec.get("seed", 0),
        "device": str(device),
        "libraries": report["libraries"],
    }
    published = publish(ctx, model_dir=out_dir, report=report, recipe=stages, provenance=provenance)
    return {**published, "metrics": metrics}


def check_memory(ctx: JobContext, estimate: Estimate) -> None:
    """Refuse a job that clearly cannot fit (the estimate is first-order: warn when close)."""
    if not estimate.available_bytes:
        return
    needed, available = estimate.memory_bytes / 2**30, estimate.available_bytes / 2**30
    if needed > MEMORY_REFUSE_FACTOR * available:
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            f"the job needs about {needed:.1f} GiB on this device, which has {available:.1f} GiB "
            "available: use a worker with more memory, fewer calibration samples or a shorter "
            "max_seq_length",
        )
    if needed > available:
        ctx.warn(f"the job may need {needed:.1f} GiB; the device has {available:.1f} GiB free")


def summary(original: dict[str, Any], compressed: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "original_checkpoint_bytes_bf16": original["checkpoint_bytes_bf16"],
        "compressed_checkpoint_bytes": compressed["checkpoint_bytes"],
        "compression_ratio": round(
            original["checkpoint_bytes_bf16"] / compressed["checkpoint_bytes"], 4
        ),
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
    return result
