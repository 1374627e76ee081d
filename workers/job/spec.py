"""The job as the worker reads it: the stored spec validated again, the recipe's params typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.errors import InvalidInput
from app.jobs.schemas import JobSpec
from app.jobs.state import ErrorCode
from app.recipes import MethodParams, check_gguf_outputs, validate_recipe
from app.search.spec import tolerance_errors
from workers.errors import JobFailure


@dataclass(frozen=True)
class ReadSpec:
    spec: JobSpec
    stages: list[tuple[str, MethodParams]]  # (method, its typed params), in order

    @property
    def evaluate_only(self) -> bool:
        return self.spec.kind == "evaluate"

    @property
    def gguf_outputs(self) -> list[tuple[str, MethodParams]]:
        """The `output.gguf` files as the stages that write them."""
        return [("gguf", params) for params in self.spec.output.gguf]


def read_spec(raw: dict[str, Any]) -> ReadSpec:
    """A spec that no longer validates (written by another version, or by hand) fails the job
    with `invalid_recipe` naming the field, before any model loads."""
    try:
        spec = JobSpec.model_validate(raw)
        if (spec.kind == "search") != (spec.search is not None):
            raise InvalidInput("`search` goes with kind `search`, and only with it", field="search")
        if spec.search is not None:
            for error in tolerance_errors(spec.search, [t.name for t in spec.evaluation.tasks]):
                raise InvalidInput(error, field="search.quality.max_accuracy_drop.task")
        stages = validate_recipe(spec.recipe) if spec.kind == "compress" else []
        if spec.output.gguf:
            check_gguf_outputs(stages, evaluate=spec.kind == "evaluate")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise JobFailure(ErrorCode.INVALID_RECIPE, f"job spec: {where}: {first['msg']}") from exc
    except InvalidInput as exc:
        named = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors) or exc.message
        raise JobFailure(ErrorCode.INVALID_RECIPE, f"job spec: {named}") from exc
    return ReadSpec(spec, [(stage.method, stage.params) for stage in stages])
