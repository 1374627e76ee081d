"""The job's estimate (time and memory) and the memory gate before any heavy work."""

from __future__ import annotations

from app.jobs.state import ErrorCode
from workers.context import JobContext
from workers.errors import JobFailure
from workers.job.run import JobRun
from workers.methods.estimate import Estimate, estimate_job
from workers.methods.shared.storage_dtype import compute_dtype

# The memory estimate is first-order: refuse only when it exceeds what is free by this factor.
MEMORY_REFUSE_FACTOR = 1.5


def estimate_resources(run: JobRun) -> Estimate:
    """Estimate, record it in the job's events, and refuse a job that clearly cannot fit."""
    ctx, source, job, data = run.ctx, run.source, run.job, run.data
    estimate = estimate_job(
        source.model,
        job.stages,
        calibration_samples=len(data.calibration_ids),
        calibration_length=max((len(c) for c in data.calibration_ids), default=0),
        eval_tokens=run.plan.eval_tokens,
        evaluate_original=job.spec.evaluation.compare_original or job.evaluate_only,
        device=source.device,
        dtype=compute_dtype(source.device),
    )
    ctx.event("info", "estimated resources", estimate.as_json())
    check_memory(ctx, estimate)
    return estimate


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
