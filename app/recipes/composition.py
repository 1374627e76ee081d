"""Which stage may follow which: the one table composed recipes are checked against.

Order of work in a recipe: change the architecture first (structured pruning, low-rank), then
train the result back towards the original (distillation), then zero weights (sparsity; a
distillation after it keeps the zeros), then put the remaining weights on a grid
(quantization). A rotation (which changes no function, only the basis the weights are stored
in) comes before all of that but structured pruning, and needs a quantization stage after it.
Going back is
refused because the later stage would undo the earlier one: pruning after quantization moves
weights off the quantization grid, a structured change after sparsity reshapes the masks, a
second quantization re-rounds rounded weights.
"""

from __future__ import annotations

from typing import Any, Literal

from app.recipes.common import MethodParams
from app.recipes.distillation import DistillParams

Kind = Literal["structured", "rotation", "low_rank", "distillation", "sparsity", "quantization"]

# kind -> the kinds that may come before it in the same recipe.
CAN_FOLLOW: dict[str, frozenset[str]] = {
    "structured": frozenset(),
    "rotation": frozenset({"structured"}),
    "low_rank": frozenset({"structured", "rotation"}),
    "distillation": frozenset({"structured", "rotation", "low_rank", "sparsity", "quantization"}),
    "sparsity": frozenset({"structured", "rotation", "distillation"}),
    "quantization": frozenset({"structured", "rotation", "distillation", "sparsity"}),
}

WHY_NOT: dict[tuple[str, str], str] = {
    ("quantization", "quantization"): "a model is quantized once per recipe (use overrides "
    "for per-layer precision)",
    ("sparsity", "sparsity"): "a model is sparsified once per recipe (use layer_sparsity for "
    "per-layer sparsity)",
    ("quantization", "sparsity"): "pruning after quantization would move weights off the "
    "quantization grid: prune first",
    ("quantization", "structured"): "structured pruning must come before quantization",
    ("sparsity", "structured"): "structured pruning must come before sparsity (it would "
    "reshape the masks)",
    ("structured", "structured"): "use one structured stage (it removes heads, channels and "
    "layers together, ranked on the same calibration pass)",
    ("low_rank", "quantization"): "quantizing low-rank factors is not supported: the factored "
    "layers are saved in Squash's own format, which has no quantized variant yet",
    ("low_rank", "sparsity"): "sparsity after a low-rank factorization is not supported",
    ("distillation", "distillation"): "use one distill stage (raise max_steps)",
    ("distillation", "structured"): "structured pruning must come before distillation (the "
    "distillation recovers what it cost)",
    ("distillation", "low_rank"): "a low-rank factorization must come before distillation (the "
    "distillation recovers what it cost)",
    ("quantization", "low_rank"): "factorizing quantized weights is not supported",
    ("sparsity", "low_rank"): "factorizing sparse weights would fill in the zeros",
    ("low_rank", "low_rank"): "use one low-rank stage",
    ("low_rank", "structured"): "structured pruning must come before a low-rank factorization",
    ("rotation", "rotation"): "use one rotate stage (list the rotations in it)",
    ("rotation", "structured"): "structured pruning must come before a rotation",
}
for _kind in ("low_rank", "distillation", "sparsity", "quantization"):
    WHY_NOT[(_kind, "rotation")] = (
        "a rotation comes first: it changes the basis every later stage works in, and "
        "quantization grids and masks do not survive it"
    )


# Quantization stages a distill stage may follow: weight-only integer grids, which the student
# trains on with fake quantization. Activation quantization (w8a8, fp8) is not trained.
QUANTIZATION_AWARE_METHODS = frozenset({"rtn", "gptq", "autoround", "awq", "ternary"})


def why_cannot_follow(earlier: str, later: str) -> str | None:
    """None if a stage of kind `later` may come after one of kind `earlier`, else the reason."""
    if earlier in CAN_FOLLOW[later]:
        return None
    return WHY_NOT.get((earlier, later), f"a {later} stage cannot follow a {earlier} stage")


def quantization_aware_errors(
    stages: list[tuple[int, str, str, MethodParams]], field: str
) -> list[dict[str, Any]]:
    """For (index, method, kind, params) of the validated stages: a distill stage after a
    quantization stage trains on its grid, so only weight-only integer grids and full weights
    (LoRA adapters would be merged off the grid); `learn_scales` needs such a stage."""
    errors: list[dict[str, Any]] = []
    quantized: str | None = None
    for index, method, kind, params in stages:
        if kind == "quantization":
            quantized = method
        if not isinstance(params, DistillParams):
            continue
        where = f"{field}[{index}]"
        if quantized is None:
            if params.learn_scales:
                errors.append(
                    {
                        "field": f"{where}.params.learn_scales",
                        "message": "learn_scales trains the scales of an earlier quantization "
                        "stage, and there is none",
                    }
                )
            continue
        if quantized not in QUANTIZATION_AWARE_METHODS:
            errors.append(
                {
                    "field": f"{where}.method",
                    "message": f"quantization-aware distillation trains weight-only integer "
                    f"grids, not {quantized!r} (activation quantization or a GGUF file, which "
                    "is written last); supported: "
                    f"{sorted(QUANTIZATION_AWARE_METHODS)}",
                    "choices": sorted(QUANTIZATION_AWARE_METHODS),
                }
            )
        if params.lora is not None:
            errors.append(
                {
                    "field": f"{where}.params.lora",
                    "message": "LoRA after a quantization stage is not supported: merging the "
                    "adapters would move the weights off the grid (train the full weights)",
                }
            )
    return errors


def rotation_errors(kinds: list[tuple[int, str]], field: str) -> list[dict[str, Any]]:
    """For (index, kind) of the stages: a rotation only prepares weights for a quantization
    grid, so a recipe whose rotation no quantization stage follows is a mistake (the checkpoint
    would only grow, by the untied LM head)."""
    rotations = [index for index, kind in kinds if kind == "rotation"]
    if not rotations or any(kind == "quantization" for _, kind in kinds):
        return []
    return [
        {
            "field": f"{field}[{rotations[0]}].method",
            "message": "a rotate stage prepares the weights for quantization: add a "
            "quantization stage after it (e.g. gptq)",
        }
    ]


def rotated_hidden_loss_errors(
    stages: list[tuple[int, str, str, MethodParams]], field: str
) -> list[dict[str, Any]]:
    """A rotation turns the residual stream into another basis (the logits stay the same).
    The job's own model is rotated the same way when it teaches (distillation/models.py), but
    another teacher is not: matching hidden states against it would pull the student back
    towards the unrotated basis."""
    rotated = False
    errors: list[dict[str, Any]] = []
    for index, _method, kind, params in stages:
        rotated = rotated or kind == "rotation"
        if (
            rotated
            and isinstance(params, DistillParams)
            and params.hidden_loss_weight > 0
            and params.teacher is not None
        ):
            errors.append(
                {
                    "field": f"{field}[{index}].params.hidden_loss_weight",
                    "message": "hidden-state matching after a rotate stage with another "
                    "teacher compares the student's rotated hidden states with the teacher's "
                    "unrotated ones: set it to 0 or leave teacher null (the job's model, "
                    "rotated as the student was)",
                }
            )
    return errors


def gguf_beside_errors(
    stages: list[tuple[str, Kind]], field: str = "output.gguf"
) -> list[dict[str, Any]]:
    """For (method, kind) of a recipe's stages: GGUF files beside its artifact are converted
    from the model its (first) quantization stage starts from, so every stage must run before
    that point, and each must be one a quantization may follow."""
    first = next((i for i, (_, kind) in enumerate(stages) if kind == "quantization"), None)
    errors = []
    if first is not None and first < len(stages) - 1:
        method = stages[first + 1][0]
        errors.append(
            {
                "field": field,
                "message": f"the GGUF files are converted from the model recipe[{first}] "
                f"starts from; recipe[{first + 1}] ({method}) runs after it and would not be in "
                "them: end the recipe with a gguf stage instead",
            }
        )
    for index, (method, kind) in enumerate(stages[:first]):
        why = why_cannot_follow(kind, "quantization")
        if why:
            message = f"recipe[{index}] ({method}) cannot be written as GGUF: {why}"
            errors.append({"field": field, "message": message})
    return errors
