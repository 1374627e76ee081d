"""The body of a job, between claim and finish, top to bottom. Each phase lives in its own
module of this package; progress spans are in `progress.py`, the report's types in
`app/reports/schema.py`. Cancellation and the lease are checked at every progress write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from app.jobs.state import ErrorCode
from workers.context import JobContext
from workers.errors import JobFailure
from workers.evaluation.suite import Attempts, EvalPlan
from workers.formats.loader import trust_remote_code
from workers.job import progress
from workers.job.compress import compress
from workers.job.data import prepare_data
from workers.job.environment import load_model, pick_device
from workers.job.evaluate import Source, measure_original
from workers.job.publish import finish
from workers.job.report import common_fields, compress_report, evaluate_report
from workers.job.resources import estimate_resources
from workers.job.spec import read_spec
from workers.methods.recipe import preflight
from workers.models.sources import resolve_model


def execute(
    ctx: JobContext, raw_spec: dict[str, Any], *, device_pref: str, scratch: Path
) -> dict[str, Any]:
    """Run the job; returns the values the runner's final commit writes."""
    job = read_spec(raw_spec)
    torch.manual_seed(job.spec.seed)
    scratch.mkdir(parents=True, exist_ok=True)
    ctx.progress("resolve", progress.RESOLVE_STARTED)
    with ctx.timed("resolve"):
        source = open_source(ctx, job.spec.model.model_dump(mode="json"), device_pref, scratch)
    ctx.fault_point("model_load")
    architecture = source.resolved.provenance.get("architecture")
    ctx.event("info", f"model loaded on {source.device}", {"architecture": architecture})
    # Every stage checked against the real model before any heavy work.
    for warning in preflight(source.model, job.stages):
        ctx.warn(warning)
    ctx.progress("prepare_data", progress.DATA_STARTED)
    data = prepare_data(ctx, job, source.tokenizer, scratch)
    plan = EvalPlan.from_spec(
        job.spec.evaluation,
        data.eval_ids,
        data.task_files,
        job.spec.seed,
        offline=ctx.settings.hf_offline,
    )
    estimate = estimate_resources(ctx, source, job, data, plan)
    attempts = Attempts(ctx)
    compare_original = job.spec.evaluation.compare_original or job.evaluate_only
    original = measure_original(ctx, attempts, source, plan, data, evaluate_it=compare_original)
    common = common_fields(ctx, job, source.resolved, source.device, data, plan, estimate)

    if job.evaluate_only:
        source.release()
        report = evaluate_report(ctx, attempts, common, original)
        return finish(ctx, report, model_dir=None, data=data, scratch=scratch)

    compressed = compress(ctx, attempts, source, job, data, plan, scratch)
    ctx.progress("upload", progress.UPLOAD.start)
    report = compress_report(ctx, attempts, common, original, compressed, plan.prompts)
    return finish(ctx, report, model_dir=compressed.model_dir, data=data, scratch=scratch)


def open_source(
    ctx: JobContext, model_spec: dict[str, Any], device_pref: str, scratch: Path
) -> Source:
    """Fetch the model (and its tokenizer) and load it on the job's device."""
    from transformers import AutoTokenizer

    device = pick_device(device_pref)
    resolved = resolve_model(model_spec, ctx.settings, scratch)
    tokenizer = AutoTokenizer.from_pretrained(
        str(resolved.path), trust_remote_code=trust_remote_code()
    )
    try:
        model = load_model(resolved.path, device)
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not load: {exc}") from exc
    return Source(resolved, tokenizer, model, device)
