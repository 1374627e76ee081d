"""A job's workload for the memory plan, from its stored spec: the same function in the API
(routing at submission) and in the worker (its own check before loading)."""

from __future__ import annotations

from app.jobs.schemas import JobSpec
from app.planning.memory_plan import Workload
from app.recipes.common import MethodParams


def workload_of(spec: JobSpec, stages: list[MethodParams]) -> Workload:
    evaluation = spec.evaluation
    calibrated = any(params.cost().calibrated for params in stages)
    return Workload(
        stages=tuple(params.cost() for params in stages),
        calibration_samples=spec.calibration.num_samples if calibrated else 0,
        calibration_length=spec.calibration.max_seq_length if calibrated else 0,
        eval_window=evaluation.context_length if evaluation.perplexity else 0,
        evaluate_original=spec.kind == "evaluate" or evaluation.compare_original,
        compresses=spec.kind == "compress",
    )
