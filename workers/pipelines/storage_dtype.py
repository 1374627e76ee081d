"""Cast a compressed model to its 16-bit storage dtype without moving any weight off its grid.

Stages run in float32 on CPU (bfloat16 matmuls there are ~6x slower: GPTQ's calibration passes on
SmolLM2 went from ~45 s to ~7 s per layer) and in bfloat16 on GPU. The artifact is stored in
16-bit either way. A plain `.to(bfloat16)` would round each scale and each dequantized weight
separately, so the integers compressed-tensors recomputes at save time could differ from the
ones the stage chose. Instead the scales are rounded first and every quantized weight is set to
exactly `q * scale16`; the integers survive, and the in-memory model, the saved file and the
reloaded model all hold the same values.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def cast_for_storage(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        scale = getattr(module, "weight_scale", None)
        if scheme is None or scheme.weights is None or scale is None:
            continue
        scale.data = scale.data.to(dtype).to(scale.dtype)
        zero_point = getattr(module, "weight_zero_point", None)
        global_scale = getattr(module, "weight_global_scale", None)
        module.weight.data = fake_quantize(
            module.weight.data.float(),
            scale.data.float(),
            zero_point.data if zero_point is not None else None,
            scheme.weights,
            global_scale=global_scale.data.float() if global_scale is not None else None,
        ).to(module.weight.dtype)
    model.to(dtype)
