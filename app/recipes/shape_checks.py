"""What a recipe must satisfy given the model's layer sizes (known at submission for built-in
models), applied to the shape each stage will see: a structured stage or a derived student
shrinks the model for the stages after it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.recipes.common import MethodParams
from app.recipes.distillation import DerivedStudent, DistillParams
from app.recipes.pruning import SparsityParams, StructuredParams, parse_mask_structure
from app.recipes.rotation import RotateParams
from app.recipes.shapes import ModelShape, fitting_group, group_size_errors

Errors = list[dict[str, Any]]


def check_shapes(
    stages: list[tuple[int, MethodParams, bool]], shape: ModelShape, field: str
) -> tuple[list[MethodParams], Errors]:
    """(index, params, whether the user gave group_size) per stage -> the params to run (a
    method's default group size that does not divide the layers, e.g. AWQ's 128 on
    SmolLM2-135M's 576, becomes the largest that does: the user did not ask for it) and the
    errors of what the user did ask for."""
    errors: Errors = []
    fitted: list[MethodParams] = []
    for index, params, group_given in stages:
        where = f"{field}[{index}].params"
        group = getattr(params, "group_size", None)
        if not group_given and isinstance(group, int):
            best = fitting_group(shape.linear_input_sizes, group)
            if best != group:
                params = params.model_copy(update={"group_size": best})
        fitted.append(params)
        errors += group_size_errors(getattr(params, "group_size", None), shape, where)
        if isinstance(params, RotateParams):
            for name, message in params.size_errors(shape.hidden_size, shape.head_dim).items():
                errors.append({"field": f"{where}.{name}", "message": message})
        if isinstance(params, StructuredParams):
            errors += _structured_errors(params, shape, where)
            shape = _after_structured(params, shape)
        if isinstance(params, DistillParams) and isinstance(params.student, DerivedStudent):
            if params.student.drop_layers >= shape.num_hidden_layers:
                errors.append(_below(f"{where}.student.drop_layers", shape.num_hidden_layers))
            cut = params.student.structured
            shape = replace(
                shape,
                intermediate_size=cut.kept_channels(shape.intermediate_size),
                num_hidden_layers=max(shape.num_hidden_layers - cut.layers, 1),
            )
        if isinstance(params, SparsityParams):
            errors += _sparsity_errors(params, shape, where)
    return fitted, errors


def _below(field: str, layers: int) -> dict[str, Any]:
    return {"field": field, "message": f"must be below the model's {layers} layers"}


def _structured_errors(params: StructuredParams, shape: ModelShape, where: str) -> Errors:
    errors: Errors = []
    group = shape.num_attention_heads // shape.num_key_value_heads
    if params.query_heads_per_group >= group:
        errors.append(
            {
                "field": f"{where}.query_heads_per_group",
                "message": f"must be below the {group} query heads per key/value group",
            }
        )
    if params.kv_groups >= shape.num_key_value_heads:
        errors.append(
            {
                "field": f"{where}.kv_groups",
                "message": f"must be below the model's {shape.num_key_value_heads} "
                "key/value groups",
            }
        )
    if params.layers >= shape.num_hidden_layers:
        errors.append(_below(f"{where}.layers", shape.num_hidden_layers))
    return errors


def _after_structured(params: StructuredParams, shape: ModelShape) -> ModelShape:
    group = shape.num_attention_heads // shape.num_key_value_heads
    kv = shape.num_key_value_heads - params.kv_groups
    return replace(
        shape,
        intermediate_size=params.kept_channels(shape.intermediate_size),
        num_key_value_heads=max(kv, 1),
        num_attention_heads=max(kv, 1) * max(group - params.query_heads_per_group, 1),
        num_hidden_layers=max(shape.num_hidden_layers - params.layers, 1),
    )


def _sparsity_errors(params: SparsityParams, shape: ModelShape, where: str) -> Errors:
    errors: Errors = []
    pattern = parse_mask_structure(params.mask_structure)
    sizes = shape.linear_input_sizes
    if pattern and any(size % pattern[1] for size in sizes):
        errors.append(
            {
                "field": f"{where}.mask_structure",
                "message": f"M={pattern[1]} does not divide the layer input sizes {sizes} of "
                "this model",
            }
        )
    layers = shape.num_hidden_layers
    if params.layer_sparsity is not None and len(params.layer_sparsity) != layers:
        errors.append(
            {
                "field": f"{where}.layer_sparsity",
                "message": f"needs one value per decoder layer: {layers}, "
                f"got {len(params.layer_sparsity)}",
            }
        )
    return errors
