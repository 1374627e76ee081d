"""Finding the layers a stage works on: targeted Linears, name patterns, decoder blocks.
Every method family uses these (compressed-tensors' matcher, so a stage's `targets`/`ignore`
select exactly what llm-compressor's modifiers will)."""

from __future__ import annotations

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
