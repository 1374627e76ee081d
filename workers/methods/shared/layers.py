"""Finding the layers a stage works on: targeted Linears, name patterns, decoder blocks.
Every method family uses these (compressed-tensors' matcher, so a stage's `targets`/`ignore`
select exactly what llm-compressor's modifiers will)."""

from __future__ import annotations

from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.recipes import LayerTargets
from workers.errors import JobFailure


def architecture(model: torch.nn.Module) -> str:
    return (getattr(model.config, "architectures", None) or [type(model).__name__])[0]


def targeted_linears(
    model: torch.nn.Module, targets: list[str], ignore: list[str]
) -> list[tuple[str, torch.nn.Linear]]:
    from compressed_tensors.utils import match_named_modules

    return [
        (name, module)
        for name, module in match_named_modules(model, targets, ignore)
        if isinstance(module, torch.nn.Linear)
    ]


def matches(name: str, patterns: list[str]) -> bool:
    from compressed_tensors.utils import match_name

    return any(match_name(name, pattern) for pattern in patterns)


def require_layers(method: str, model: torch.nn.Module, params: LayerTargets) -> list[str]:
    layers = targeted_linears(model, list(params.targets), list(params.ignore))
    if not layers:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"{method}: targets {params.targets} minus ignore {params.ignore} "
            "match no Linear layer",
        )
    return [name for name, _ in layers]


def blocks(model: torch.nn.Module) -> list[Any]:
    """The decoder blocks, untyped: a Llama-style block's parts (self_attn.q_proj, mlp…) are
    plain attributes that only the architecture defines."""
    return list(decoder_layers(model))


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated transformer blocks (`model.model.layers` for Llama-like models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            f"cannot find the decoder layers of {type(model).__name__} (expected model.layers)",
        )
    return layers
