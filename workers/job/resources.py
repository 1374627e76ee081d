"""The job's time estimate, beside its memory plan (`workers/job/plan.py`), in the events and
the report."""

from __future__ import annotations

from app.planning.memory_plan import MemoryPlan
from workers.job.run import JobRun
from workers.methods.estimate import (
    Estimate,
    EvaluationWork,
    artifact_decode_factor,
    estimate_job,
)
from workers.methods.shared.storage_dtype import compute_dtype


def estimate_resources(run: JobRun, memory_plan: MemoryPlan | None) -> Estimate:
    ctx, source, job, data = run.ctx, run.source, run.job, run.data
    memory, budget = None, None
    if memory_plan is not None:
        gpu = memory_plan.device == "gpu"
        memory = memory_plan.device_peak_bytes if gpu else memory_plan.host_peak_bytes
        budget = memory_plan.budget.device_bytes if gpu else memory_plan.budget.host_bytes
    evaluation = job.spec.evaluation
    efficiency = evaluation.efficiency
    work = EvaluationWork(
        prompts=len(evaluation.prompts),
        max_new_tokens=evaluation.max_new_tokens,
        efficiency=efficiency.model_dump() if efficiency.enabled else None,
        compare_original=evaluation.compare_original or job.evaluate_only,
        artifact_decode_factor=artifact_decode_factor(job.stages, source.device),
    )
    estimate = estimate_job(
        source.model,
        job.stages,
        calibration_samples=len(data.calibration_ids),
        calibration_length=max((len(c) for c in data.calibration_ids), default=0),
        eval_tokens=run.plan.eval_tokens,
        evaluate_original=job.spec.evaluation.compare_original or job.evaluate_only,
        device=source.device,
        dtype=compute_dtype(source.device),
        memory_bytes=memory,
        available_bytes=budget,
        evaluation=work,
        extra_outputs=job.gguf_outputs,
    )
    ctx.event("info", "estimated resources", estimate.as_json())
    return estimate
