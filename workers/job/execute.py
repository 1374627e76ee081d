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
from workers.evaluation.suite import EvalPlan
from workers.job import gguf_outputs, progress
from workers.job.compress import compress
from workers.job.data import prepare_data
from workers.job.environment import pick_device
from workers.job.evaluate import measure_original
from workers.job.plan import plan_job
from workers.job.publish import finish
from workers.job.report import common_fields, compress_report, evaluate_report
from workers.job.resources import estimate_resources
from workers.job.run import JobRun
from workers.job.source import fetch_source, open_source
from workers.job.spec import read_spec
from workers.memory import PhaseMemory, fix_malloc_mmap_threshold
from workers.methods.recipe import preflight
from workers.search.finish import finish_search, search_state
from workers.search.start import start_search


def execute(
    ctx: JobContext, raw_spec: dict[str, Any], *, device_pref: str, scratch: Path
) -> dict[str, Any]:
    """Run the job; returns the values the runner's final commit writes."""
    job = read_spec(raw_spec)
    if ctx.settings.worker_malloc_mmap_threshold_bytes:
        fix_malloc_mmap_threshold(ctx.settings.worker_malloc_mmap_threshold_bytes)
    torch.manual_seed(job.spec.seed)
    device = pick_device(device_pref)
    ctx.memory = PhaseMemory(cuda=device.type == "cuda")
    scratch.mkdir(parents=True, exist_ok=True)
    ctx.progress("resolve", progress.RESOLVE_STARTED)
    with ctx.timed("resolve"):
        resolved = fetch_source(ctx, job.spec.model, scratch)
        memory_plan = plan_job(ctx, job, resolved.path, device)
        ctx.memory.plan = memory_plan.as_json() if memory_plan else None
        offloaded = memory_plan is not None and memory_plan.mode == "disk_offloaded"
        source = open_source(resolved, device, offloaded=offloaded, scratch=scratch)
    ctx.fault_point("model_load")
    architecture = source.resolved.provenance.get("architecture")
    ctx.event(
        "info",
        f"model {'opened disk-offloaded' if offloaded else 'loaded'} on {source.device}",
        {"architecture": architecture, "offloaded": offloaded},
    )
    if offloaded and job.spec.output.gguf:
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            "output.gguf: GGUF files of a model this large (held disk-offloaded) are not "
            "written yet; end the recipe with a gguf stage on a worker with more memory",
        )
    # Every stage (and GGUF file) checked against the real model before any heavy work.
    for warning in preflight(source.model, [*job.stages, *job.gguf_outputs]):
        ctx.warn(warning)
    ctx.progress("prepare_data", progress.DATA_STARTED)
    data = prepare_data(ctx, job, source.tokenizer, scratch)
    evaluation = job.spec.evaluation
    plan = EvalPlan.from_spec(
        evaluation, data.eval_ids, data.task_files, job.spec.seed, offline=ctx.settings.hf_offline
    )
    run = JobRun(ctx, job, source, data, plan, scratch)
    estimate = estimate_resources(run, memory_plan)
    if job.spec.kind == "search":
        state = search_state(run)
        if state is None:
            start_search(run)  # raises Suspended: its candidates run as child jobs
        return finish_search(run, estimate, state)
    original = measure_original(run)
    common = common_fields(run, estimate)

    if job.evaluate_only:
        source.release()
        return finish(run, evaluate_report(run, common, original), model_dir=None)

    compressed = compress(run)
    beside: tuple[list[dict[str, Any]], list[tuple[str, Path]]] = ([], [])
    if job.spec.output.gguf and compressed.gguf_source is not None:
        beside = gguf_outputs.write_all(run, compressed.gguf_source, original.get("perplexity"))
    ctx.progress("upload", progress.UPLOAD.start)
    report = compress_report(run, common, original, compressed, gguf_rows=beside[0])
    return finish(run, report, model_dir=compressed.model_dir, extra_files=beside[1])
