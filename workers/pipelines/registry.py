"""Method name → implementation. Explicit imports, explicit registration: no class scanning."""

from __future__ import annotations

from workers.pipelines.base import CompressionMethod

REGISTRY: dict[str, CompressionMethod] = {}


def register(cls: type[CompressionMethod]) -> type[CompressionMethod]:
    if cls.name in REGISTRY:
        raise RuntimeError(f"method {cls.name} registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> CompressionMethod:
    return REGISTRY[name]


# Each method module registers itself on import; list them here.
from workers.pipelines.distillation import method  # noqa: E402, F401
from workers.pipelines.low_rank import svd  # noqa: E402, F401
from workers.pipelines.pruning import magnitude, sparsegpt, structured, wanda  # noqa: E402, F401
from workers.pipelines.quantization import awq, fp8, gptq, rtn, ternary, w8a8  # noqa: E402, F401
