"""Quantization-aware distillation: a distill stage after a weight-only integer quantization
stage trains the student on that stage's grid.

While training, every quantized Linear computes with `s * clamp(round(W / s) + z, qmin, qmax)
- s * z`, where rounding passes its gradient straight through (the straight-through estimator)
to the float weight W behind the integer, and, with `learn_scales`, to the scale s (LSQ's
gradient: the same expression differentiated in s). The scheme, scales and zero points are the
quantization stage's compressed-tensors parameters, so after training the model is saved as
before: `cast_for_storage` rounds each weight with the trained scale and compressed-tensors packs
the integers. At the end every weight is projected onto its grid, so the saved integers are
exactly the ones the last training step computed with.

compressed-tensors' own quantized forward already routes the gradient to the weight (it swaps
the weight's data for its fake-quantized copy), but its backward through the layer then uses
the float weight, never the scale, and ternary layers need a narrower range than their 2-bit
storage: so the forward is ours while training, and compressed-tensors' again afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from workers.methods.shared.storage_dtype import is_weight_quantized

# Set by a quantization stage whose integers use less than their storage's range (ternary:
# {-1, 0, 1} stored as 2-bit integers, whose range is [-2, 1]).
INTEGER_RANGE_ATTR = "squash_integer_range"
MIN_SCALE = 1e-8
FROZEN_SUFFIXES = ("weight_scale", "weight_zero_point", "weight_global_scale", "weight_g_idx")


def quantized_linears(model: torch.nn.Module) -> dict[str, Any]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and is_weight_quantized(module)
    }


def integer_range(module: Any) -> tuple[int, int]:
    custom = getattr(module, INTEGER_RANGE_ATTR, None)
    if custom is not None:
        return int(custom[0]), int(custom[1])
    bits = module.quantization_scheme.weights.num_bits
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def grid(module: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integers [rows, groups, group] incl. the zero point, scales and zero points as
    [rows, groups, 1]) of the module's weight; differentiable in the weight and the scale."""
    weight = module.weight
    args = module.quantization_scheme.weights
    rows, columns = weight.shape
    group = args.group_size if args.group_size else columns
    # A learned scale stays positive (an optimizer step could otherwise cross zero).
    scale = module.weight_scale.reshape(rows, -1, 1).to(weight.dtype).clamp_min(MIN_SCALE)
    zero_point = getattr(module, "weight_zero_point", None)
    offset = (
        zero_point.reshape(rows, -1, 1).to(weight.dtype)
        if zero_point is not None and not args.symmetric
        else torch.zeros((), dtype=weight.dtype, device=weight.device)
    )
    low, high = integer_range(module)
    grouped = weight.reshape(rows, columns // group, group)
    return torch.clamp(round_ste(grouped / scale) + offset, low, high), scale, offset


def fake_quantized_weight(module: Any) -> torch.Tensor:
    """The module's weight on its grid, differentiable in the weight and the scale."""
    integers, scale, offset = grid(module)
    return ((integers - offset) * scale).reshape(module.weight.shape)


def _forward(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, fake_quantized_weight(module), module.bias)

    return forward


def set_trainable(student: torch.nn.Module, learn_scales: bool) -> dict[str, Any]:
    """Float weights train; scales only with `learn_scales`; integer tensors never. Returns
    notes on what trains."""
    scales = 0
    for name, parameter in student.named_parameters():
        is_scale = name.endswith(".weight_scale")
        frozen = name.endswith(FROZEN_SUFFIXES) and not (learn_scales and is_scale)
        parameter.requires_grad_(parameter.is_floating_point() and not frozen)
        scales += int(is_scale and parameter.requires_grad)
    layers = quantized_linears(student)
    return {
        "quantization_aware": True,
        "quantized_layers": len(layers),
        "learned_scales": scales,
        "integer_ranges": sorted({str(integer_range(m)) for m in layers.values()}),
    }


@torch.no_grad()
def project_onto_grid(model: torch.nn.Module, storage: torch.dtype = torch.bfloat16) -> None:
    """Each quantized weight set to its last integers times its scale rounded to the storage
    dtype, which is exactly what `cast_for_storage` then finds and saves (a learned float32
    scale rounded afterwards could move a weight near a boundary to the next integer)."""
    for module in quantized_linears(model).values():
        integers, _, offset = grid(module)
        rounded = module.weight_scale.data.clamp_min(MIN_SCALE).to(storage)
        rounded = rounded.to(module.weight_scale.dtype)
        module.weight_scale.data = rounded
        scale = rounded.reshape(integers.shape[0], -1, 1).to(module.weight.dtype)
        module.weight.data = ((integers - offset) * scale).reshape(module.weight.shape)


@contextmanager
def fake_quantized_training(student: torch.nn.Module) -> Iterator[None]:
    """Our differentiable forward on every quantized Linear while the block runs; afterwards
    the weights are projected onto their grid and compressed-tensors' forward is back."""
    layers = quantized_linears(student)
    saved: dict[str, Any] = {
        name: module.__dict__.get("forward") for name, module in layers.items()
    }
    for module in layers.values():
        module.forward = _forward(module)
    try:
        yield
    finally:
        for name, module in layers.items():
            if saved[name] is None:
                del module.forward
            else:
                module.forward = saved[name]
        for parameter in student.parameters():
            parameter.requires_grad_(False)
        project_onto_grid(student)
