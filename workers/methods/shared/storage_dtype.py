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

import torch


def compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bfloat16 matmuls are several times slower there), bfloat16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@torch.no_grad()
def cast_for_storage(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """In place, one layer at a time: each quantized weight is replaced by its exact float32
    value as soon as it is computed (holding them all until the end doubled the save phase's
    peak: 9.9 GB for a 1.1B model in float32), then every other floating tensor is cast."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    on_grid: set[int] = set()
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        scale = getattr(module, "weight_scale", None)
        if scheme is None or scheme.weights is None or scale is None:
            continue
        scale.data = scale.data.to(dtype).float()
        zero_point = getattr(module, "weight_zero_point", None)
        global_scale = getattr(module, "weight_global_scale", None)
        module.weight.data = fake_quantize(
            module.weight.data.float(),
            scale.data,
            zero_point.data if zero_point is not None else None,
            scheme.weights,
            global_scale=global_scale.data.float() if global_scale is not None else None,
        )
        on_grid.add(id(module.weight))
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in on_grid and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
