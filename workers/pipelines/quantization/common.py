"""What RTN and GPTQ share: the compressed-tensors scheme and the pre-flight layer checks."""

from __future__ import annotations

import torch

from app.jobs.state import ErrorCode
from app.recipes import WeightQuantParams
from workers.errors import JobFailure


def quantization_scheme(params: WeightQuantParams) -> object:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=params.bits,
        type="int",
        symmetric=params.symmetric,
        strategy="group" if params.group_size else "channel",
        group_size=params.group_size,
        actorder=getattr(params, "actorder", None),
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


def preflight_weight_quant(
    method: str, model: torch.nn.Module, params: WeightQuantParams
) -> list[str]:
    """Fail in seconds, naming layers and valid choices, instead of after calibration."""
    layers = targeted_linears(model, list(params.targets), list(params.ignore))
    if not layers:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"{method}: targets {params.targets} minus ignore {params.ignore} "
            "match no Linear layer",
        )
    if params.group_size:
        bad = sorted({n for n, m in layers if m.in_features % params.group_size})
        if bad:
            sizes = sorted({m.in_features for _, m in layers})
            divisors = [g for g in (16, 32, 64, 128, 256) if all(s % g == 0 for s in sizes)]
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"{method}: group_size {params.group_size} does not divide the input size of "
                f"{len(bad)} layers (e.g. {bad[:3]}); input sizes {sizes}; "
                f"valid group sizes: {divisors or 'none: use per-channel (null)'}",
            )
    warnings = []
    if params.group_size not in (None, 128):
        warnings.append(f"group_size {params.group_size}: vLLM's fastest INT4 kernels expect 128")
    return warnings
