"""What the integer weight-quantization stages share: compressed-tensors schemes (with per-layer
overrides for mixed precision) and the pre-flight checks that run before any heavy work."""

from __future__ import annotations

from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.recipes import LayerOverride, WeightQuantParams
from workers.errors import JobFailure
from workers.methods.shared.layers import architecture, matches, require_layers, targeted_linears
from workers.models.hf import linear

# vLLM's Marlin/Machete INT4 kernels are tuned for groups of 128 and want layer sizes that are
# multiples of 128; other shapes fall back to slower kernels (or none).
VLLM_DIM_MULTIPLE = 128
# What vLLM serves with fast kernels (Marlin/Machete): 4 or 8 bits, one scale per 128 weights or
# per channel. The preflight warns outside it; a search with target runtime `vllm` stays inside.
VLLM_FAST_BITS = (4, 8)
VLLM_FAST_GROUPS = (None, 128)
# The stage's scale_search -> llm-compressor's weight observer (None = its min/max default).
# Memoryless: a weight is observed once, so a moving average would only slow it down.
OBSERVERS: dict[str, str | None] = {
    "minmax": None,
    "mse": "memoryless_mse",
    "imatrix": "imatrix_mse",
}


def int_weights(
    bits: int,
    group_size: int | None,
    symmetric: bool,
    actorder: str | None = None,
    scale_search: str = "minmax",
) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=symmetric,
        strategy="group" if group_size else "channel",
        group_size=group_size,
        actorder=actorder,
        observer=OBSERVERS[scale_search],
    )


def resolve_override(params: WeightQuantParams, override: LayerOverride) -> tuple[Any, ...]:
    group_size = params.group_size if override.group_size is None else override.group_size
    return (
        override.bits,
        None if group_size == "channel" else group_size,
        params.symmetric if override.symmetric is None else override.symmetric,
    )


def layer_settings(
    model: torch.nn.Module, params: WeightQuantParams
) -> dict[str, tuple[int, int | None, bool]]:
    """Each targeted layer's (bits, group_size, symmetric) after overrides (the last match wins)."""
    settings: dict[str, tuple[int, int | None, bool]] = {}
    default = (params.bits, params.group_size, params.symmetric)
    for name, _ in targeted_linears(model, list(params.targets), list(params.ignore)):
        settings[name] = default
        for override in params.overrides:
            if matches(name, override.targets):
                settings[name] = resolve_override(params, override)
    return settings


def config_groups(
    params: WeightQuantParams, settings: dict[str, tuple[int, int | None, bool]]
) -> dict[str, Any]:
    """compressed-tensors config groups: the stage's scheme for its targets, plus one group per
    distinct override setting that lists its layers by exact name. compressed-tensors ranks exact
    names above patterns and class names, so the override wins without depending on how it
    orders overlapping regular expressions."""
    from compressed_tensors.quantization import QuantizationScheme

    actorder = getattr(params, "actorder", None)
    search = params.scale_search
    groups: dict[str, Any] = {
        "group_0": QuantizationScheme(
            targets=list(params.targets),
            weights=int_weights(params.bits, params.group_size, params.symmetric, actorder, search),
        )
    }
    default = (params.bits, params.group_size, params.symmetric)
    by_setting: dict[tuple[int, int | None, bool], list[str]] = {}
    for name, setting in settings.items():
        if setting != default:
            by_setting.setdefault(setting, []).append(name)
    for index, (setting, names) in enumerate(sorted(by_setting.items(), key=str), start=1):
        groups[f"group_{index}"] = QuantizationScheme(
            targets=names, weights=int_weights(*setting, actorder, search)
        )
    return groups


def weight_quant_plan(
    model: torch.nn.Module, params: WeightQuantParams
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resolve the overrides once: (compressed-tensors config groups, the stage's notes with how
    many layers use each setting, e.g. {"int4 g64 sym": 180, "int8 channel sym": 30})."""
    settings = layer_settings(model, params)
    counts: dict[str, int] = {}
    for bits, group, symmetric in settings.values():
        key = f"int{bits} {f'g{group}' if group else 'channel'} {'sym' if symmetric else 'asym'}"
        counts[key] = counts.get(key, 0) + 1
    notes = {
        "quantized_layers": len(settings),
        "layers_by_scheme": counts,
        "scale_search": params.scale_search,
    }
    return config_groups(params, settings), notes


def require_mappings(
    method: str, model: torch.nn.Module, registry: dict[str, Any], remedy: str = ""
) -> None:
    """Methods that smooth between layer pairs need the architecture's mapping list."""
    if architecture(model) not in registry:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"{method}: no smoothing mappings for architecture {architecture(model)}; "
            f"supported: {sorted(registry)}{remedy}",
        )


def preflight_weight_quant(
    method: str, model: torch.nn.Module, params: WeightQuantParams
) -> list[str]:
    """Fail in seconds, naming layers and valid choices, instead of after calibration."""
    require_layers(method, model, params)
    names = [name for name, _ in model.named_modules() if name]
    for index, override in enumerate(params.overrides):
        if not any(matches(n, override.targets) for n in names):
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"{method}: overrides[{index}] targets {override.targets} match no layer",
            )
    settings = layer_settings(model, params)
    modules = {name: linear(model, name) for name in settings}
    sizes = sorted({modules[n].in_features for n in settings})
    for group_size in sorted({g for _, g, _ in settings.values() if g}):
        bad = sorted(
            n
            for n, (_, g, _) in settings.items()
            if g == group_size and modules[n].in_features % group_size
        )
        if bad:
            divisors = [g for g in (16, 32, 64, 128, 256) if all(s % g == 0 for s in sizes)]
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"{method}: group_size {group_size} does not divide the input size of "
                f"{len(bad)} layers (e.g. {bad[:3]}); input sizes {sizes}; "
                f"valid group sizes: {divisors or 'none: use per-channel (null)'}",
            )
    return vllm_kernel_warnings(method, modules, settings)


def vllm_kernel_warnings(
    method: str,
    modules: dict[str, torch.nn.Linear],
    settings: dict[str, tuple[int, int | None, bool]],
) -> list[str]:
    warnings = []
    fits_128 = all(modules[name].in_features % VLLM_DIM_MULTIPLE == 0 for name in settings)
    fast_groups = {str(g) for g in VLLM_FAST_GROUPS}
    odd_groups = sorted({str(g) for b, g, _ in settings.values() if b <= 4} - fast_groups)
    if odd_groups and fits_128:  # else 128 is no option: the layer-size warning below says so
        warnings.append(
            f"{method}: group_size {', '.join(odd_groups)}: vLLM's fast INT4 kernels "
            "(Marlin/Machete) are tuned for 128"
        )
    low_bits = sorted({b for b, _, _ in settings.values() if b not in VLLM_FAST_BITS})
    if low_bits:
        warnings.append(
            f"{method}: {low_bits} bits: stored densely packed (transformers loads it), "
            "but vLLM has no fast kernel for it"
        )
    odd_dims = sorted(
        {
            dim
            for name in settings
            for dim in (modules[name].in_features, modules[name].out_features)
            if dim % VLLM_DIM_MULTIPLE
        }
    )
    if odd_dims:
        warnings.append(
            f"{method}: layer sizes {odd_dims} are not multiples of {VLLM_DIM_MULTIPLE}; "
            "vLLM may fall back to slower kernels for those layers"
        )
    return warnings
