"""A job's workload for the memory plan, from its stored spec: the same function in the API
(routing at submission) and in the worker (its own check before loading)."""

from __future__ import annotations

from app.jobs.schemas import JobSpec
from app.planning.memory_plan import Workload
from app.recipes.common import MethodParams
from app.recipes.cost import StageCost

# A search runs no recipe itself: its first attempt scores the layers (a backward pass per
# sample), its second loads the winner's files and measures them as a compress job does.
SEARCH_COST = StageCost(fisher=True)


def workload_of(spec: JobSpec, stages: list[MethodParams]) -> Workload:
    evaluation = spec.evaluation
    costs = (SEARCH_COST,) if spec.kind == "search" else tuple(p.cost() for p in stages)
    calibrated = any(cost.calibrated or cost.fisher for cost in costs)
    return Workload(
        stages=costs,
        calibration_samples=spec.calibration.num_samples if calibrated else 0,
        calibration_length=spec.calibration.max_seq_length if calibrated else 0,
        eval_window=evaluation.context_length if evaluation.perplexity else 0,
        evaluate_original=spec.kind == "evaluate" or evaluation.compare_original,
        compresses=spec.kind in ("compress", "search"),
    )
