"""Round-to-nearest weight-only quantization (RTN), the PTQ baseline.

Example stage: `{"method": "rtn", "params": {"bits": 4, "group_size": 64, "symmetric": true}}`

Uses llm-compressor's QuantizationModifier (data-free: min/max observers on the weights) and
saves through compressed-tensors, whose `pack-quantized` / `int-quantized` checkpoints load in
transformers and vLLM. Writing our own packing would give a format nothing else reads.
"""

from __future__ import annotations

import torch

from app.jobs.state import ErrorCode
from app.recipes import RtnParams
from workers.errors import JobFailure
from workers.pipelines.base import CompressionMethod, StageInput, StageResult
from workers.pipelines.registry import register


def quantization_scheme(params: RtnParams) -> object:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=params.bits,
        type="int",
        symmetric=params.symmetric,
        strategy="group" if params.group_size else "channel",
        group_size=params.group_size,
    )
    return QuantizationScheme(targets=list(params.targets), weights=weights)


def targeted_linears(
    model: torch.nn.Module, targets: list[str], ignore: list[str]
) -> list[tuple[str, torch.nn.Linear]]:
    from compressed_tensors.utils import match_named_modules

    return [
        (name, module)
        for name, module in match_named_modules(model, targets, ignore)
        if isinstance(module, torch.nn.Linear)
    ]


@register
class RoundToNearest(CompressionMethod):
    name = "rtn"
    params_type = RtnParams

    def preflight(self, model: torch.nn.Module, params: RtnParams) -> list[str]:  # type: ignore[override]
        layers = targeted_linears(model, list(params.targets), list(params.ignore))
        if not layers:
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"rtn: targets {params.targets} minus ignore {params.ignore} match no Linear layer",
            )
        if params.group_size:
            bad = sorted({n for n, m in layers if m.in_features % params.group_size})
            if bad:
                sizes = sorted({m.in_features for _, m in layers})
                divisors = [g for g in (16, 32, 64, 128, 256) if all(s % g == 0 for s in sizes)]
                raise JobFailure(
                    ErrorCode.INVALID_RECIPE,
                    f"rtn: group_size {params.group_size} does not divide the input size of "
                    f"{len(bad)} layers (e.g. {bad[:3]}); input sizes {sizes}; "
                    f"valid group sizes: {divisors or 'none: use per-channel (null)'}",
                )
        warnings = []
        if params.group_size not in (None, 128):
            warnings.append(
                f"group_size {params.group_size}: vLLM's fastest INT4 kernels expect 128"
            )
        return warnings

    def apply(self, stage: StageInput, params: RtnParams) -> StageResult:  # type: ignore[override]
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        modifier = QuantizationModifier(
            config_groups={"group_0": quantization_scheme(params)}, ignore=list(params.ignore)
        )
        oneshot(model=stage.model, recipe=modifier)
        quantized = len(targeted_linears(stage.model, list(params.targets), list(params.ignore)))
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={"quantized_layers": quantized, "bits": params.bits},
        )
