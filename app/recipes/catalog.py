"""The method catalog and recipe validation: an ordered list of stages, each `{method, params}`.

The single source of truth for which methods exist, what parameters they take and which may
follow which. `GET /v1/methods`, request validation and the OpenAPI document read it; a test
asserts that `workers/methods/catalog.py` implements exactly these methods. Pure pydantic:
no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from app.errors import InvalidInput
from app.recipes.common import MethodParams
from app.recipes.composition import (
    Kind,
    gguf_beside_errors,
    quantization_aware_errors,
    rotated_hidden_loss_errors,
    rotation_errors,
    why_cannot_follow,
)
from app.recipes.distillation import DistillParams, PreviousStudent
from app.recipes.gguf import GgufParams
from app.recipes.low_rank import LowRankParams
from app.recipes.pruning import (
    MagnitudeParams,
    SparseGptParams,
    StructuredParams,
    WandaParams,
)
from app.recipes.quantization import (
    AutoRoundParams,
    AwqParams,
    Fp8Params,
    GptqParams,
    RtnParams,
    TernaryParams,
    W8A8Params,
)
from app.recipes.rotation import RotateParams
from app.recipes.shape_checks import check_shapes
from app.recipes.shapes import ModelShape
from app.schema_types import expected_choices

MAX_STAGES = 16


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: Literal["quantization", "pruning", "distillation", "low_rank"]
    kind: Kind  # what composition checks (app/recipes/composition.py)
    summary: str
    params: type[MethodParams]


def _spec(name: str, family: Any, kind: Kind, summary: str, params: Any) -> MethodSpec:
    return MethodSpec(name=name, family=family, kind=kind, summary=summary, params=params)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "rtn",
            "quantization",
            "quantization",
            "Round-to-nearest weight-only INT8/4/3/2 quantization, per channel or group.",
            RtnParams,
        ),
        _spec(
            "gptq",
            "quantization",
            "quantization",
            "GPTQ weight-only INT8/4/3/2 quantization with calibration data.",
            GptqParams,
        ),
        _spec(
            "autoround",
            "quantization",
            "quantization",
            "AutoRound weight-only INT8/4/3/2: rounding and clipping tuned by signed gradient "
            "descent on each decoder layer's output error.",
            AutoRoundParams,
        ),
        _spec(
            "awq",
            "quantization",
            "quantization",
            "AWQ activation-aware weight-only quantization (4-bit by default).",
            AwqParams,
        ),
        _spec(
            "w8a8",
            "quantization",
            "quantization",
            "SmoothQuant + INT8 weights and dynamic per-token INT8 activations.",
            W8A8Params,
        ),
        _spec(
            "fp8",
            "quantization",
            "quantization",
            "FP8 E4M3 weights and activations (optionally FP8 KV cache).",
            Fp8Params,
        ),
        _spec(
            "ternary",
            "quantization",
            "quantization",
            "Ternary (1.58-bit) absmean weights, stored packed at 2 bits.",
            TernaryParams,
        ),
        _spec(
            "gguf",
            "quantization",
            "quantization",
            "llama.cpp GGUF file (Q8_0, Q4_0/1, Q5_0/1, k-quants Q2_K_S…Q6_K) with an "
            "importance matrix from the calibration data: for llama.cpp, Ollama, LM Studio.",
            GgufParams,
        ),
        _spec(
            "rotate",
            "quantization",
            "rotation",
            "Hadamard rotations fused into the weights (SpinQuant R1/R2) before quantization: "
            "same function, flatter weights.",
            RotateParams,
        ),
        _spec(
            "magnitude",
            "pruning",
            "sparsity",
            "Magnitude pruning, unstructured or N:M (no calibration data).",
            MagnitudeParams,
        ),
        _spec(
            "wanda",
            "pruning",
            "sparsity",
            "Wanda pruning (|W| x activation norm), unstructured or N:M.",
            WandaParams,
        ),
        _spec(
            "sparsegpt",
            "pruning",
            "sparsity",
            "SparseGPT one-shot pruning with weight reconstruction, unstructured or N:M.",
            SparseGptParams,
        ),
        _spec(
            "structured",
            "pruning",
            "structured",
            "Remove attention heads, MLP channels and decoder layers: a smaller dense model.",
            StructuredParams,
        ),
        _spec(
            "low_rank",
            "low_rank",
            "low_rank",
            "Activation-aware SVD of Linear layers at a parameter or rank budget.",
            LowRankParams,
        ),
        _spec(
            "distill",
            "distillation",
            "distillation",
            "Knowledge distillation (forward KL, reverse KL or on-policy GKD) into the "
            "compressed, a derived smaller, or another student, with checkpoint and resume.",
            DistillParams,
        ),
    )
}


class StageIn(BaseModel):
    """One recipe stage as submitted. `params` is checked against the method's own model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    method: str
    params: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Documented as the per-method union (app/recipes/stage_union.py), imported here
        # because it is built from METHODS.
        from app.recipes.stage_union import typed_stage

        return handler(typed_stage().core_schema)


@dataclass(frozen=True)
class Stage:
    method: str
    params: MethodParams

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params.model_dump(mode="json")}


def validate_recipe(
    stages: list[StageIn], *, field: str = "recipe", shape: ModelShape | None = None
) -> list[Stage]:
    """Check every stage, their order and (when the model's layer sizes are known) whether they
    fit it; collect all errors with their field paths before failing."""
    errors: list[dict[str, Any]] = []
    validated: list[tuple[int, Stage]] = []
    if not stages:
        errors.append({"field": field, "message": "a recipe needs at least one stage"})
    if len(stages) > MAX_STAGES:
        errors.append({"field": field, "message": f"at most {MAX_STAGES} stages"})
    for index, stage in enumerate(stages):
        where = f"{field}[{index}]"
        spec = METHODS.get(stage.method)
        if spec is None:
            errors.append(
                {
                    "field": f"{where}.method",
                    "message": f"unknown method {stage.method!r}",
                    "choices": sorted(METHODS),
                }
            )
            continue
        try:
            params = spec.params.model_validate(stage.params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                entry: dict[str, Any] = {"field": f"{where}.params{loc}", "message": err["msg"]}
                if "expected" in (err.get("ctx") or {}):
                    entry["choices"] = expected_choices(err["ctx"]["expected"])
                errors.append(entry)
            continue
        validated.append((index, Stage(stage.method, params)))
    errors.extend(_order_errors(stages, field))
    errors.extend(_student_errors(validated, field))
    described: list[tuple[int, str, str, MethodParams]] = [
        (i, stage.method, METHODS[stage.method].kind, stage.params) for i, stage in validated
    ]
    errors.extend(quantization_aware_errors(described, field))
    errors.extend(rotated_hidden_loss_errors(described, field))
    errors.extend(
        rotation_errors([(i, METHODS[stage.method].kind) for i, stage in validated], field)
    )
    if shape is not None:
        given = [(i, stage.params, "group_size" in stages[i].params) for i, stage in validated]
        fitted, shape_errors = check_shapes(given, shape, field)
        validated = [(i, Stage(s.method, p)) for (i, s), p in zip(validated, fitted, strict=True)]
        errors.extend(shape_errors)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidInput(detail, code="invalid_recipe", errors=errors)
    return [stage for _, stage in validated]


def _order_errors(stages: list[StageIn], field: str) -> list[dict[str, Any]]:
    errors = []
    seen: list[tuple[str, str]] = []  # (kind, method) of the earlier stages
    for index, stage in enumerate(stages):
        spec = METHODS.get(stage.method)
        if spec is None:
            continue
        for earlier_kind, earlier_method in seen:
            reason = why_cannot_follow(earlier_kind, spec.kind)
            if reason:
                errors.append(
                    {
                        "field": f"{field}[{index}].method",
                        "message": f"{stage.method!r} cannot follow {earlier_method!r}: {reason}",
                    }
                )
                break
        seen.append((spec.kind, stage.method))
    return errors


def _student_errors(stages: list[tuple[int, Stage]], field: str) -> list[dict[str, Any]]:
    """A distill stage's student must make sense where the stage stands in the recipe."""
    errors = []
    for index, stage in stages:
        if not isinstance(stage.params, DistillParams):
            continue
        where = f"{field}[{index}].params.student"
        previous = isinstance(stage.params.student, PreviousStudent)
        if previous and index == 0:
            errors.append(
                {
                    "field": where,
                    "message": "student 'previous' distills the output of earlier stages, and "
                    "this is the first stage: compress first, or use a 'derived' or 'model' "
                    "student",
                }
            )
        if not previous and index > 0:
            errors.append(
                {
                    "field": where,
                    "message": f"a {stage.params.student.kind!r} student starts a new model, "
                    "which would discard the earlier stages: make the distill stage the first",
                }
            )
    return errors


def describe_methods() -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "family": spec.family,
            "kind": spec.kind,
            "summary": spec.summary,
            "description": (spec.params.__doc__ or "").strip(),
            "params_schema": spec.params.model_json_schema(),
        }
        for spec in METHODS.values()
    ]


GGUF_OUTPUTS_FIELD = "output.gguf"


def check_gguf_outputs(stages: list[Stage], *, evaluate: bool = False) -> None:
    """Whether GGUF files can be written beside this recipe's artifact (a job's `output.gguf`):
    a 422 naming that field when they cannot (an evaluate job writes no model)."""
    if evaluate:
        raise InvalidInput(
            "an evaluate job writes no model: GGUF files come from a compress job",
            code="invalid_recipe",
            field=GGUF_OUTPUTS_FIELD,
        )
    kinds = [(stage.method, METHODS[stage.method].kind) for stage in stages]
    errors = gguf_beside_errors(kinds, GGUF_OUTPUTS_FIELD)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidInput(detail, code="invalid_recipe", errors=errors)
