"""Recipe schema: methods, their parameters, composition rules and validation.

Import from here; the submodules split the catalog by family (pure pydantic, no torch).
"""

from app.recipes.catalog import (
    MAX_STAGES,
    METHODS,
    MethodSpec,
    Stage,
    StageIn,
    check_gguf_outputs,
    describe_methods,
    validate_recipe,
)
from app.recipes.common import LayerTargets, MethodParams, check_patterns
from app.recipes.distillation import (
    DerivedStudent,
    DistillParams,
    LoraSpec,
    ModelStudent,
    PreviousStudent,
)
from app.recipes.gguf import GgufParams
from app.recipes.low_rank import LowRankParams
from app.recipes.pruning import (
    MagnitudeParams,
    SparseGptParams,
    SparsityParams,
    StructuredParams,
    WandaParams,
    parse_mask_structure,
)
from app.recipes.quantization import (
    MAX_OVERRIDES,
    AutoRoundParams,
    AwqParams,
    Fp8Params,
    GptqParams,
    IntBits,
    LayerOverride,
    RtnParams,
    TernaryParams,
    W8A8Params,
    WeightQuantParams,
)
from app.recipes.rotation import RotateParams
from app.recipes.shapes import BUILTIN_SHAPES, ModelShape

__all__ = [
    "BUILTIN_SHAPES",
    "MAX_OVERRIDES",
    "MAX_STAGES",
    "METHODS",
    "AutoRoundParams",
    "AwqParams",
    "DerivedStudent",
    "DistillParams",
    "Fp8Params",
    "GgufParams",
    "GptqParams",
    "IntBits",
    "LayerOverride",
    "LayerTargets",
    "LoraSpec",
    "LowRankParams",
    "MagnitudeParams",
    "MethodParams",
    "MethodSpec",
    "ModelShape",
    "ModelStudent",
    "PreviousStudent",
    "RotateParams",
    "RtnParams",
    "SparseGptParams",
    "SparsityParams",
    "Stage",
    "StageIn",
    "StructuredParams",
    "TernaryParams",
    "W8A8Params",
    "WandaParams",
    "WeightQuantParams",
    "check_gguf_outputs",
    "check_patterns",
    "describe_methods",
    "parse_mask_structure",
    "validate_recipe",
]
