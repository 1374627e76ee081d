"""Measuring the input model (once per weights and settings: the baseline cache) and the model
between stages. The compressed model's evaluation is in `workers/job/compress.py`."""

from __future__ import annotations

from typing import Any

import torch

from app.reports.schema import REPORT_VERSION
from workers.evaluation import baseline
from workers.evaluation.measure import (
    checkpoint_bytes_as,
    nonzero_parameter_count,
    parameter_count,
    saved_checkpoint_bytes,
)
from workers.evaluation.suite import Attempts, evaluate, perplexity_metrics
from workers.job import progress
from workers.job.environment import device_name, library_versions
from workers.job.run import JobRun
from workers.methods.recipe import STORAGE_DTYPE


def measure_original(run: JobRun) -> dict[str, Any]:
    """Counts and 16-bit size always; the evaluations when the job compares with the original
    (or only evaluates)."""
    ctx, job = run.ctx, run.job
    model = run.source.model
    original: dict[str, Any] = {
        "parameters": parameter_count(model),
        "nonzero_parameters": nonzero_parameter_count(model),
        # Measured in the 16-bit storage dtype of every artifact: a float32 save would inflate
        # every ratio. Offloaded, from the checkpoint's headers: saving needs the whole model.
        "checkpoint_bytes_bf16": checkpoint_bytes_as(run.source.resolved.path, STORAGE_DTYPE)
        if run.source.offloaded
        else saved_checkpoint_bytes(model, STORAGE_DTYPE),
    }
    original["effective_bits_per_parameter"] = round(
        8 * original["checkpoint_bytes_bf16"] / original["parameters"], 4
    )
    with ctx.timed("evaluate_original"):
        if job.spec.evaluation.compare_original or job.evaluate_only:
            original.update(original_metrics(run))
    ctx.progress("evaluate_original", progress.EVALUATE_ORIGINAL.end)
    return original


def original_metrics(run: JobRun) -> dict[str, Any]:
    """The input model's evaluations, from the baseline cache when another job computed them
    for the same weights, evaluation and device."""
    ctx, source, plan, attempts = run.ctx, run.source, run.plan, run.evaluations
    key = baseline.baseline_key(
        weights_sha256=source.resolved.provenance["weights_sha256"],
        evaluation=plan.key_settings,
        dataset_sha256=run.data.eval_corpus.sha256,
        device=device_name(source.device),
        versions=library_versions(),
        report_version=REPORT_VERSION,
    )
    cached = baseline.load(ctx.settings, key)
    if cached is not None:
        ctx.event("info", "original model's metrics from the baseline cache", {"key": key})
        for name in cached.get("evaluations", []):
            attempts.status[name] = {"status": "ok", "cached": True}
        origin = {"cached": True, "key": key, "computed_by_job": cached.get("computed_by_job")}
        return {**cached["metrics"], "baseline": origin}
    own = Attempts(ctx)
    metrics = evaluate(
        ctx,
        own,
        "original",
        source.model,
        source.tokenizer,
        source.resolved.path,
        plan,
        device=source.device,
        span=progress.EVALUATE_ORIGINAL.bounds,
    )
    attempts.status.update(own.status)
    if own.all_ok:
        baseline.store(ctx.settings, key, metrics, list(own.status), str(ctx.job_id))
    return {**metrics, "baseline": {"cached": False, "key": key, "stored": own.all_ok}}


def stage_metrics(run: JobRun, model: torch.nn.Module, index: int) -> dict[str, Any]:
    """Counts and perplexity after a stage that is not the last."""
    ctx, plan = run.ctx, run.plan
    metrics: dict[str, Any] = {
        "parameters": parameter_count(model),
        "nonzero_parameters": nonzero_parameter_count(model),
    }

    def tick(done: int, total: int) -> None:
        ctx.progress(
            f"evaluate_stage_{index}", progress.STAGES.start, {"window": done, "windows": total}
        )

    found = run.evaluations.run(
        f"stage_{index}.perplexity", lambda: perplexity_metrics(model, plan, tick)
    )
    if found:
        metrics["perplexity"] = found["perplexity"]
    return metrics
