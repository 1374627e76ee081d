"""The plan at submission: read the model's size where the API can without downloading
weights (built-in models; a local directory the API process can see), plan every declared pool
and pick one. Other sources (Hugging Face, S3) go to their device's largest pool, whose worker
plans again from the downloaded config before loading and refuses what does not fit."""

from __future__ import annotations

from app.config import Settings
from app.errors import InvalidInput
from app.jobs.schemas import JobSpec
from app.planning.memory_plan import Budget, MemoryPlan, plan_memory
from app.planning.model_facts import ModelFacts, UnreadableConfig, facts_from_directory
from app.planning.pools import NoPoolFits, Routing, route
from app.planning.workload import workload_of
from app.recipes.common import MethodParams
from app.recipes.shapes import builtin_facts
from app.sources import BuiltinModel, LocalModel


def readable_facts(spec: JobSpec, settings: Settings) -> ModelFacts | None:
    model = spec.model
    if isinstance(model, BuiltinModel):
        return builtin_facts(model.name)
    if isinstance(model, LocalModel) and not model.gguf_file:
        for root in settings.model_dirs:
            folder = root / model.path
            try:
                if folder.resolve().is_relative_to(root.resolve()) and folder.is_dir():
                    return facts_from_directory(folder)
            except (OSError, UnreadableConfig, ValueError):
                return None  # the worker reports what is wrong with it
    return None


def route_submission(
    spec: JobSpec, stages: list[MethodParams], device: str, settings: Settings
) -> Routing:
    """The pool for a new job, or 422 (`no_pool_fits`) naming each pool's shortfall."""
    facts = readable_facts(spec, settings)
    workload = workload_of(spec, stages)

    def plan_for(budget: Budget) -> MemoryPlan:
        assert facts is not None
        return plan_memory(facts, workload, budget)

    try:
        return route(device, settings.worker_pools, plan_for if facts else None)
    except NoPoolFits as refusal:
        raise InvalidInput(str(refusal), code="no_pool_fits", field="model") from None
