"""Recipe schema: an ordered list of stages, each `{method, params}`.

This module is the single source of truth for which methods exist and what parameters they take.
`GET /v1/methods`, request validation and the OpenAPI document read it; a test asserts that
`workers/pipelines/registry.py` implements exactly these methods. Pure pydantic: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import InvalidInput

MAX_STAGES = 16


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightQuantParams(MethodParams):
    """Integer weight-only quantization settings shared by RTN and GPTQ."""

    bits: Literal[4, 8] = Field(default=8, description="Bits per weight")
    group_size: int | None = Field(
        default=None,
        ge=8,
        le=4096,
        description="Weights per scale along the input dimension; null = one scale per "
        "output channel. Must divide every quantized layer's input size.",
    )
    symmetric: bool = Field(default=True, description="Symmetric (no zero point) or asymmetric")
    targets: list[str] = Field(
        default=["Linear"], min_length=1, description="Module types or `re:` name patterns"
    )
    ignore: list[str] = Field(
        default=["lm_head"], description="Layer names or `re:` patterns left unquantized"
    )

    @model_validator(mode="after")
    def _group_is_power_of_two(self) -> WeightQuantParams:
        if self.group_size is not None and self.group_size & (self.group_size - 1):
            raise ValueError("group_size must be a power of two (e.g. 32, 64, 128)")
        return self


class RtnParams(WeightQuantParams):
    """Round-to-nearest weight-only integer quantization (the PTQ baseline).

    Example stage: `{"method": "rtn", "params": {"bits": 4, "group_size": 64}}`.
    Stored in the compressed-tensors `pack-quantized` format, which transformers loads with
    `from_pretrained` and vLLM serves.
    """


class GptqParams(WeightQuantParams):
    """GPTQ: one-shot second-order weight quantization on calibration data.

    Example stage: `{"method": "gptq", "params": {"bits": 4, "group_size": 64}}`. Uses the job's
    `calibration` (num_samples sequences of max_seq_length tokens). Same storage as RTN.
    """

    actorder: Literal["static", "group"] | None = Field(
        default=None,
        description="Activation ordering: quantize columns by decreasing Hessian diagonal",
    )
    dampening_frac: float = Field(
        default=0.01, gt=0, lt=1, description="Fraction of the mean Hessian diagonal added"
    )
    block_size: int = Field(default=128, ge=1, le=4096, description="Columns per update block")

    @model_validator(mode="after")
    def _group_order_needs_groups(self) -> GptqParams:
        if self.actorder == "group" and self.group_size is None:
            raise ValueError("actorder 'group' needs a group_size")
        return self


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: Literal["quantization", "pruning", "distillation", "low_rank"]
    summary: str
    params: type[MethodParams]


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="rtn",
            family="quantization",
            summary="Round-to-nearest weight-only INT8/INT4 quantization, per channel or group.",
            params=RtnParams,
        ),
        MethodSpec(
            name="gptq",
            family="quantization",
            summary="GPTQ weight-only INT8/INT4 quantization with calibration data.",
            params=GptqParams,
        ),
    )
}


class StageIn(BaseModel):
    """One recipe stage as submitted. `params` is checked against the method's own model."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(json_schema_extra={"enum": sorted(METHODS)})
    params: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    method: str
    params: MethodParams

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params.model_dump(mode="json")}


def validate_recipe(stages: list[StageIn], *, field: str = "recipe") -> list[Stage]:
    """Check every stage; collect all errors with their field paths before failing."""
    errors: list[dict[str, Any]] = []
    validated: list[Stage] = []
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
            validated.append(Stage(stage.method, spec.params.model_validate(stage.params)))
        except ValidationError as exc:
            for err in exc.errors():
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                entry: dict[str, Any] = {"field": f"{where}.params{loc}", "message": err["msg"]}
                if "expected" in (err.get("ctx") or {}):
                    entry["choices"] = err["ctx"]["expected"]
                errors.append(entry)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidInput(detail, code="invalid_recipe", errors=errors)
    return validated


def describe_methods() -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "family": spec.family,
            "summary": spec.summary,
            "description": (spec.params.__doc__ or "").strip(),
            "params_schema": spec.params.model_json_schema(),
        }
        for spec in METHODS.values()
    ]
