"""Method name → implementation: the one module that lists every method. No method imports it
(methods import only `workers/methods/base.py` and `workers/methods/shared/`), so there is no
import cycle and no registration by side effect; `tests/unit/test_recipes.py` checks that this
table and the API's catalog (`app/recipes/catalog.py`) name the same methods."""

from __future__ import annotations

from typing import Any

from workers.methods.base import CompressionMethod
from workers.methods.distillation.method import Distill
from workers.methods.low_rank.svd import LowRank
from workers.methods.pruning.magnitude import Magnitude
from workers.methods.pruning.sparsegpt import SparseGpt
from workers.methods.pruning.structured import Structured
from workers.methods.pruning.wanda import Wanda
from workers.methods.quantization.autoround import AutoRound
from workers.methods.quantization.awq import Awq
from workers.methods.quantization.fp8 import Fp8
from workers.methods.quantization.gguf import Gguf
from workers.methods.quantization.gptq import Gptq
from workers.methods.quantization.rotate import Rotate
from workers.methods.quantization.rtn import RoundToNearest
from workers.methods.quantization.ternary import Ternary
from workers.methods.quantization.w8a8 import W8A8

IMPLEMENTATIONS: tuple[type[CompressionMethod[Any]], ...] = (
    Rotate,
    RoundToNearest,
    Gptq,
    AutoRound,
    Awq,
    W8A8,
    Fp8,
    Ternary,
    Gguf,
    Magnitude,
    Wanda,
    SparseGpt,
    Structured,
    Distill,
    LowRank,
)
REGISTRY: dict[str, CompressionMethod[Any]] = {cls.name: cls() for cls in IMPLEMENTATIONS}
if len(REGISTRY) != len(IMPLEMENTATIONS):
    raise RuntimeError("two methods share a name")


def get_method(name: str) -> CompressionMethod[Any]:
    return REGISTRY[name]
