"""Cast a compressed model to its 16-bit storage dtype without moving any weight off its grid.

Stages run in float32 on CPU (bfloat16 matmuls there are ~6x slower: GPTQ's calibration passes
on SmolLM2 went from ~45 s to ~12 s per decoder layer) and in bfloat16 on GPU. The artifact is
stored in 16-bit either way. A plain `.to(bfloat16)` would round each scale and each
dequantized weight separately, and compressed-tensors recomputes the integers at save time as
`weight / scale` in the weight's dtype: in bfloat16 that flips ~0.4% of INT8 integers by one
step (measured on a random 576x576 layer). So the scales are rounded to 16 bits first, every
quantized weight is set to exactly `q * scale16` and kept in float32 (where that product and the
division back are exact) until compression packs it; everything else is cast. The saved
integers are the ones the stage chose, and a model reloaded in float32 holds exactly the
in-memory values.
"""

from __future__ import annotations

from typing import Any

import torch


def compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bfloat16 matmuls are several times slower there), bfloat16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def is_weight_quantized(module: torch.nn.Module) -> bool:
    """Whether a stage attached a compressed-tensors scheme that quantizes the weight."""
    scheme = getattr(module, "quantization_scheme", None)
    return scheme is not None and scheme.weights is not None


@torch.no_grad()
def cast_for_storage(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """In place, one layer at a time: each quantized weight is replaced by its exact float32
    value as soon as it is computed (holding them all until the end doubled the save phase's
    peak: 9.9 GB for a 1.1B model in float32), then every other floating tensor is cast."""
    on_grid: set[int] = set()
    for module in model.modules():
        scale = getattr(module, "weight_scale", None)
        if not is_weight_quantized(module) or scale is None:
            continue
        scheme = module.quantization_scheme
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        state = on_grid_state({name: t.data for name, t in own}, scheme, dtype)
        scale.data = state["weight_scale"]
        module.weight.data = state["weight"]
        on_grid.add(id(module.weight))
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in on_grid and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


@torch.no_grad()
def on_grid_state(
    state: dict[str, torch.Tensor], scheme: Any, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One quantized module's tensors as they are stored: the scale rounded to `dtype`, the
    weight exactly `q * scale` in float32 (see the module docstring), every other floating
    tensor in `dtype`. Does not change `state`."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    scale = state["weight_scale"].to(dtype).float()
    zero_point = state.get("weight_zero_point")
    global_scale = state.get("weight_global_scale")
    weight = fake_quantize(
        state["weight"].float(),
        scale,
        zero_point,
        scheme.weights,
        global_scale=global_scale.float() if global_scale is not None else None,
    )
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return {**cast, "weight": weight}
