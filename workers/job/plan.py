"""The job's memory plan on this worker, before any weight loads: from the downloaded
config.json and safetensors headers, the recipe and this worker's memory (its pool's figures
in WORKER_HOST_MEMORY_BYTES / WORKER_DEVICE_MEMORY_BYTES, else what is free now). A job whose
plan does not fit fails `unsupported` with the figures, instead of being killed by the OS
hours later."""

from __future__ import annotations

from pathlib import Path

import torch

from app.jobs.state import ErrorCode
from app.planning.memory_plan import Budget, MemoryPlan, plan_memory
from app.planning.model_facts import UnreadableConfig, facts_from_directory
from app.planning.workload import workload_of
from workers.context import JobContext
from workers.errors import JobFailure
from workers.job.spec import ReadSpec
from workers.methods.estimate import available_memory


def worker_budget(ctx: JobContext, device: torch.device) -> Budget:
    settings = ctx.settings
    host = settings.worker_host_memory_bytes or available_memory(torch.device("cpu"))
    if device.type != "cuda":
        return Budget(device="cpu", host_bytes=host)
    gpu = settings.worker_device_memory_bytes or available_memory(device)
    return Budget(device="gpu", host_bytes=host, device_bytes=gpu)


def plan_job(
    ctx: JobContext, job: ReadSpec, model_dir: Path, device: torch.device
) -> MemoryPlan | None:
    """The plan, recorded in the job's events; raises `unsupported` when it cannot fit. None
    for a config the plan cannot read (an architecture outside the Llama family's naming):
    the job runs unplanned, as before plans existed, and says so."""
    try:
        facts = facts_from_directory(model_dir)
    except UnreadableConfig as exc:
        ctx.warn(f"no memory plan: {exc}")
        return None
    workload = workload_of(job.spec, [params for _, params in job.stages])
    mode = ctx.settings.worker_execution_mode
    plan = plan_memory(
        facts, workload, worker_budget(ctx, device), forced_mode=None if mode == "auto" else mode
    )
    ctx.event("info", f"memory plan: {plan.mode} on {plan.device}", plan.as_json())
    if plan.shortfall:
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            f"the job does not fit this worker ({plan.shortfall}; largest phase: "
            f"{plan.peak_phase()}): send it to a pool with more memory, or use fewer "
            "calibration samples, a shorter max_seq_length or a shorter evaluation context",
        )
    return plan
