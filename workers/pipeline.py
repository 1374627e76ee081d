"""The body of a job: everything between claim and finish, with progress and check points.

Progress budget: resolve 0-10, original evaluation 10-35, stages 35-60, save + load check 60-70,
compressed evaluation 70-90, upload 90-100.
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from app.db import session_scope
from app.jobs import repository
from app.jobs.state import ErrorCode
from app.reports.html import render as render_html
from app.reports.points import point_of
from workers.context import JobContext
from workers.errors import JobFailure
from workers.evaluation import baseline, layer_error
from workers.evaluation.measure import (
    directory_bytes,
    greedy_generations,
    nonzero_parameter_count,
    parameter_count,
    quantized_weight_storage,
    saved_checkpoint_bytes,
    unquantized_tensors,
    weight_bytes,
)
from workers.evaluation.suite import Attempts, EvalPlan, evaluate, perplexity_metrics
from workers.formats.loader import PLAIN, artifact_format, load_pretrained, trust_remote_code
from workers.methods.estimate import Estimate, estimate_job
from workers.methods.recipe import (
    STORAGE_DTYPE,
    needs_calibration,
    parse_stages,
    preflight,
    run_stages,
    save_artifact,
)
from workers.methods.shared.storage_dtype import compute_dtype
from workers.models.datasets import CALIBRATION_SHARE, Corpus, load_corpus, split_tokens
from workers.models.sources import ResolvedModel, resolve_model
from workers.publish import publish

REPORT_VERSION = 2
# The memory estimate is first-order: refuse only when it exceeds what is free by this factor.
MEMORY_REFUSE_FACTOR = 1.5
LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors", "lm_eval")


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

    seed = spec.get("seed", 0)
    torch.manual_seed(seed)
    device = pick_device(device_pref)
    scratch.mkdir(parents=True, exist_ok=True)
    evaluation = spec["evaluation"]
    stages = spec["recipe"]
    evaluate_only = spec.get("kind") == "evaluate"

    ctx.progress("resolve", 1)
    with ctx.timed("resolve"):
        resolved = resolve_model(spec["model"], ctx.settings, scratch)
        tokenizer = AutoTokenizer.from_pretrained(
            str(resolved.path), trust_remote_code=trust_remote_code()
        )
        try:
            model = load_model(resolved.path, device)
        except Exception as exc:
            raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not load: {exc}") from exc
    ctx.fault_point("model_load")
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

    data = prepare_data(ctx, spec, tokenizer, parsed, evaluate_only, scratch)
    plan = EvalPlan.from_spec(
        evaluation, data.eval_ids, data.task_files, seed, offline=ctx.settings.hf_offline
    )

    estimate = estimate_job(
        model,
        parsed,
        calibration_samples=len(data.calibration_ids),
        calibration_length=max((len(c) for c in data.calibration_ids), default=0),
        eval_tokens=int(len(plan.eval_ids) * plan.context_length / plan.stride)
        if plan.perplexity
        else 0,
        evaluate_original=evaluation["compare_original"] or evaluate_only,
        device=device,
        dtype=compute_dtype(device),
    )
    ctx.event("info", "estimated resources", estimate.as_json())
    check_memory(ctx, estimate)

    attempts = Attempts(ctx)
    original = {
        "parameters": parameter_count(model),
        "nonzero_parameters": nonzero_parameter_count(model),
        # Measured in the 16-bit storage dtype of every artifact: a float32 save would inflate
        # every ratio.
        "checkpoint_bytes_bf16": saved_checkpoint_bytes(model, STORAGE_DTYPE),
    }
    original["effective_bits_per_parameter"] = round(
        8 * original["checkpoint_bytes_bf16"] / original["parameters"], 4
    )
    with ctx.timed("evaluate_original"):
        if evaluation["compare_original"] or evaluate_only:
            original.update(
                original_metrics(ctx, attempts, model, tokenizer, resolved, plan, data, device)
            )
    ctx.progress("evaluate_original", 35)

    if evaluate_only:
        del model
        report = base_report(ctx, spec, resolved, device, data, plan, estimate)
        report |= {"kind": "evaluate", "model_metrics": original, "stages": []}
        report["summary"] = evaluate_summary(original, resolved)
        return finish(
            ctx, report, attempts, model_dir=None, stages=stages, data=data, scratch=scratch
        )

    # The original's linear layers on calibration text, for the per-layer error after loading.
    captured = None
    layer_tokens = evaluation.get("layer_error_tokens", 0)
    if layer_tokens and data.layer_error_ids:
        captured = attempts.run(
            "layer_error.capture", partial(layer_error.capture, model, data.layer_error_ids)
        )
    original_layers = int(getattr(model.config, "num_hidden_layers", 0))
    model.to(compute_dtype(device))

    stage_started: dict[int, float] = {}
    per_stage = evaluation.get("per_stage", True) and plan.perplexity and len(parsed) > 1

    def on_stage(index: int, name: str) -> None:
        ctx.progress(f"stage:{name}", 35 + 25 * index / len(parsed))
        ctx.fault_point("compression")
        stage_started[index] = time.perf_counter()

    def on_stage_done(index: int, notes: dict[str, Any], current: torch.nn.Module) -> None:
        seconds = time.perf_counter() - stage_started[index]
        ctx.timings[f"stage_{index}_{notes['method']}"] = round(seconds, 3)
        if per_stage and index < len(parsed) - 1:
            # The last stage's figures are the compressed model's, measured after loading.
            notes["metrics_after"] = stage_metrics(ctx, attempts, current, plan, index)
        ctx.event("stage", f"stage {index} ({notes['method']}) done", notes)

    with ctx.timed("stages"):
        outcome = run_stages(
            model,
            tokenizer,
            parsed,
            data.calibration_ids,
            ctx,
            on_stage,
            on_stage_done,
            source_path=resolved.path,
            eval_ids=plan.eval_ids,
            eval_context_length=plan.context_length,
            scratch=scratch,
            seed=seed,
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

    checkpoint_bytes = weight_bytes(out_dir)
    compressed: dict[str, Any] = {
        **counts,
        "checkpoint_bytes": checkpoint_bytes,
        "artifact_bytes": directory_bytes(out_dir),
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
                tokenizer,
                out_dir,
                plan,
                device=device,
                span=(70, 90),
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
    ctx.progress("upload", 90)

    report = base_report(ctx, spec, resolved, device, data, plan, estimate)
    report |= {
        "kind": "compress",
        "stages": stage_notes,
        "format": save_format,
        "original": original,
        "compressed": compressed,
        "generations": side_by_side(
            evaluation["prompts"], original.get("generations"), compressed["generations"]
        ),
        "layer_error": errors,
        "load_check": load_check,
    }
    report["summary"] = summary(original, compressed, resolved)
    return finish(
        ctx, report, attempts, model_dir=out_dir, stages=stages, data=data, scratch=scratch
    )


@dataclass
class JobData:
    eval_ids: list[int]
    eval_corpus: Corpus
    calibration_ids: list[list[int]]
    calibration_sha256: str | None
    layer_error_ids: list[int]
    task_files: dict[str, Path]
    overlap: dict[str, Any]


def prepare_data(
    ctx: JobContext,
    spec: dict[str, Any],
    tokenizer: Any,
    parsed: list[tuple[str, Any]],
    evaluate_only: bool,
    scratch: Path,
) -> JobData:
    """Evaluation tokens (held-out share), calibration samples (calibration share), the tokens
    for the per-layer error, and the task data files; with the measured overlap of the two
    shares (disjoint by construction on one corpus; measured, not assumed, across corpora)."""
    evaluation = spec["evaluation"]
    eval_corpus = load_corpus(evaluation["dataset"], ctx.settings)
    _, eval_pool = split_tokens(tokenizer(eval_corpus.text)["input_ids"])
    eval_ids = eval_pool[: evaluation["max_tokens"]]
    calibration_ids: list[list[int]] = []
    calibration_sha256 = None
    layer_error_ids: list[int] = []
    cal_pool: list[int] = []
    layer_tokens = evaluation.get("layer_error_tokens", 0)
    if not evaluate_only and (needs_calibration(parsed) or layer_tokens):
        cal_spec = spec["calibration"]
        cal_corpus = load_corpus(cal_spec["dataset"], ctx.settings)
        cal_pool, _ = split_tokens(tokenizer(cal_corpus.text)["input_ids"])
        layer_error_ids = cal_pool[:layer_tokens]
        if needs_calibration(parsed):
            length = cal_spec["max_seq_length"]
            calibration_ids = [
                cal_pool[i : i + length] for i in range(0, len(cal_pool) - length + 1, length)
            ][: cal_spec["num_samples"]]
            calibration_sha256 = cal_corpus.sha256
    used = [t for sample in calibration_ids for t in sample] or layer_error_ids
    overlap = measure_overlap(used, eval_ids)
    if overlap["shared_windows"]:
        ctx.warn(
            f"{overlap['shared_windows']} of the evaluation's {overlap['window']}-token windows "
            "also occur in the calibration text: perplexity may be optimistic"
        )
    task_files = fetch_task_data(ctx, evaluation.get("tasks") or [], scratch / "tasks")
    return JobData(
        eval_ids,
        eval_corpus,
        calibration_ids,
        calibration_sha256,
        layer_error_ids,
        task_files,
        overlap,
    )


OVERLAP_WINDOW = 32


def measure_overlap(calibration: list[int], evaluation: list[int]) -> dict[str, Any]:
    """How many evaluation windows of OVERLAP_WINDOW tokens also appear in the calibration
    tokens (a repeated passage, or two corpora sharing text)."""
    n = OVERLAP_WINDOW
    seen = {tuple(calibration[i : i + n]) for i in range(0, max(len(calibration) - n + 1, 0))}
    windows = [tuple(evaluation[i : i + n]) for i in range(0, max(len(evaluation) - n + 1, 0), n)]
    shared = sum(1 for w in windows if w in seen)
    return {
        "window": n,
        "evaluation_windows": len(windows),
        "shared_windows": shared,
        "calibration_tokens_checked": len(calibration),
    }


def fetch_task_data(ctx: JobContext, tasks: list[dict[str, Any]], target: Path) -> dict[str, Path]:
    """Download the JSONL of every task that names `data` (a failure fails that task only)."""
    files: dict[str, Path] = {}
    for task in tasks:
        if not task.get("data"):
            continue
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{task['name']}.jsonl"
        try:
            corpus = load_corpus({"kind": "s3", "uri": task["data"]}, ctx.settings)
        except JobFailure as exc:
            ctx.warn(f"task {task['name']}: {exc.message}")
            continue
        path.write_text(corpus.text)
        files[task["name"]] = path
    return files


def original_metrics(
    ctx: JobContext,
    attempts: Attempts,
    model: torch.nn.Module,
    tokenizer: Any,
    resolved: ResolvedModel,
    plan: EvalPlan,
    data: JobData,
    device: torch.device,
) -> dict[str, Any]:
    """The input model's evaluations, from the baseline cache when another job computed them
    for the same weights, evaluation and device."""
    key = baseline.baseline_key(
        weights_sha256=resolved.provenance["weights_sha256"],
        evaluation=ctx_evaluation_spec(plan),
        dataset_sha256=data.eval_corpus.sha256,
        device=device_name(device),
        versions=library_versions(),
        report_version=REPORT_VERSION,
    )
    cached = baseline.load(ctx.settings, key)
    if cached is not None:
        ctx.event("info", "original model's metrics from the baseline cache", {"key": key})
        for name in cached.get("evaluations", []):
            attempts.status[name] = {"status": "ok", "cached": True}
        source = {"cached": True, "key": key, "computed_by_job": cached.get("computed_by_job")}
        return {**cached["metrics"], "baseline": source}
    own = Attempts(ctx)
    metrics = evaluate(
        ctx, own, "original", model, tokenizer, resolved.path, plan, device=device, span=(10, 35)
    )
    attempts.status.update(own.status)
    if own.all_ok:
        baseline.store(ctx.settings, key, metrics, list(own.status), str(ctx.job_id))
    return {**metrics, "baseline": {"cached": False, "key": key, "stored": own.all_ok}}


def ctx_evaluation_spec(plan: EvalPlan) -> dict[str, Any]:
    """The evaluation settings the original's figures depend on (the baseline key)."""
    return {
        "perplexity": plan.perplexity,
        "max_tokens": len(plan.eval_ids),
        "context_length": plan.context_length,
        "stride": plan.stride,
        "prompts": plan.prompts,
        "max_new_tokens": plan.max_new_tokens,
        "tasks": plan.tasks,
        "efficiency": plan.efficiency,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{torch.get_num_threads()}threads"


def stage_metrics(
    ctx: JobContext, attempts: Attempts, model: torch.nn.Module, plan: EvalPlan, index: int
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "parameters": parameter_count(model),
        "nonzero_parameters": nonzero_parameter_count(model),
    }

    def tick(done: int, total: int) -> None:
        ctx.progress(f"evaluate_stage_{index}", 35, {"window": done, "windows": total})

    found = attempts.run(f"stage_{index}.perplexity", lambda: perplexity_metrics(model, plan, tick))
    if found:
        metrics["perplexity"] = found["perplexity"]
    return metrics


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


def base_report(
    ctx: JobContext,
    spec: dict[str, Any],
    resolved: ResolvedModel,
    device: torch.device,
    data: JobData,
    plan: EvalPlan,
    estimate: Estimate,
) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "job_id": str(ctx.job_id),
        "model": resolved.provenance,
        "recipe": spec["recipe"],
        "seed": spec.get("seed", 0),
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


def finish(
    ctx: JobContext,
    report: dict[str, Any],
    attempts: Attempts,
    *,
    model_dir: Path | None,
    stages: list[dict[str, Any]],
    data: JobData,
    scratch: Path,
) -> dict[str, Any]:
    report["evaluations"] = attempts.status
    report["warnings"] = ctx.warnings
    report["timings_s"] = ctx.timings
    report["libraries"] = library_versions()
    provenance = {
        "model": report["model"],
        "calibration_sha256": data.calibration_sha256,
        "evaluation_sha256": data.eval_corpus.sha256,
        "recipe": stages,
        "seed": report["seed"],
        "device": report["device"],
        "libraries": report["libraries"],
    }
    published = publish(
        ctx,
        staging=scratch,
        model_dir=model_dir,
        report=report,
        report_html=render_html(report, comparable_points(ctx, report)),
        recipe=stages,
        provenance=provenance,
    )
    return {**published, "metrics": report["summary"]}


def comparable_points(ctx: JobContext, report: dict[str, Any]) -> list[dict[str, Any]]:
    """This job and the tenant's other succeeded jobs on the same base model, for the report's
    size-vs-quality chart (a snapshot: the page is rendered once, when the job finishes)."""
    base = report["summary"]["base_model"]
    points = []
    with session_scope(ctx.settings.database_url) as session:
        job = repository.get_job(session, ctx.job_id)
        peers = repository.succeeded_jobs_of_tenant(session, job.tenant_id) if job else []
        for peer in peers:
            if peer.id != ctx.job_id and (peer.metrics or {}).get("base_model") == base:
                point = point_of(str(peer.id), peer.spec["recipe"], peer.metrics)
                if point:
                    points.append(point)
    mine = point_of(str(ctx.job_id), report["recipe"], report["summary"])
    return [*points, mine] if mine else points


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
    return out


def summary(
    original: dict[str, Any], compressed: dict[str, Any], resolved: ResolvedModel
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "base_model": resolved.provenance["weights_sha256"],
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
    return result


def evaluate_summary(measured: dict[str, Any], resolved: ResolvedModel) -> dict[str, Any]:
    """An evaluate job's metrics: the model as it is, in the shape /v1/compare reads."""
    return {
        "base_model": resolved.provenance["weights_sha256"],
        "checkpoint_bytes_bf16": measured["checkpoint_bytes_bf16"],
        "parameters": measured["parameters"],
        "nonzero_parameters": measured["nonzero_parameters"],
        "evaluated": headline(measured),
    }
