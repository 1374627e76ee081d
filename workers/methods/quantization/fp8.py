"""FP8 (E4M3) weights and activations, optionally an FP8 KV cache.

Example stage: `{"method": "fp8", "params": {"activations": "dynamic"}}`

llm-compressor's QuantizationModifier with the `FP8_DYNAMIC` preset (per-channel weight scales,
per-token activation scales computed at run time: data-free) or `FP8` (per-tensor static weight
and activation scales from calibration). A KV-cache scheme adds per-tensor key/value scales from
calibration. Stored in compressed-tensors' `float-quantized` format: producing it needs no GPU,
running it fast needs FP8 tensor cores (Ada/Hopper or newer), which the report says.
"""

from __future__ import annotations

import torch

from app.recipes import Fp8Params
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.shared.calibration import oneshot_calibrated, require_calibration
from workers.methods.shared.layers import require_layers
from workers.models.hf import pretrained

SERVING_NOTE = (
    "FP8 artifacts run fast only on GPUs with FP8 tensor cores (compute capability >= 8.9); "
    "elsewhere vLLM falls back to weight-only FP8 (Marlin) or dequantizes"
)


class Fp8(CompressionMethod[Fp8Params]):
    name = "fp8"
    params_type = Fp8Params

    def preflight(self, model: torch.nn.Module, params: Fp8Params) -> list[str]:
        require_layers(self.name, model, params)
        return [f"fp8: {SERVING_NOTE}"]

    def apply(self, stage: StageInput, params: Fp8Params) -> StageResult:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        names = require_layers(self.name, stage.model, params)
        kv_cache = (
            QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True)
            if params.kv_cache
            else None
        )
        modifier = QuantizationModifier(
            targets=list(params.targets),
            scheme="FP8_DYNAMIC" if params.activations == "dynamic" else "FP8",
            ignore=list(params.ignore),
            kv_cache_scheme=kv_cache,
        )
        if self.needs_calibration(params):
            samples = require_calibration(self.name, stage)
            oneshot_calibrated(stage, self.name, modifier, samples)
        else:
            oneshot(model=pretrained(stage.model), recipe=modifier)
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                "quantized_layers": len(names),
                "weights": "fp8 e4m3 "
                + ("per-channel" if params.activations == "dynamic" else "per-tensor"),
                "activations": f"fp8 e4m3 {params.activations}",
                "kv_cache": "fp8 e4m3 per-tensor" if params.kv_cache else None,
                "serving": SERVING_NOTE,
            },
        )
