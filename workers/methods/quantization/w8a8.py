"""SmoothQuant + INT8 W8A8: INT8 weights (one scale per output channel) and INT8 activations
(one scale per token, computed at run time).

Example stage: `{"method": "w8a8", "params": {"smoothing_strength": 0.8}}`

Activations of LLMs have a few outlier channels that per-token INT8 cannot represent.
llm-compressor's SmoothQuantModifier divides each input channel by
s = max|X|^a / max|W|^(1-a) (a = smoothing strength) and folds s into the preceding norm,
moving the difficulty into the weights; then GPTQ (or RTN) rounds the weights with the `W8A8`
preset. Stored in compressed-tensors' `int-quantized` format (vLLM: INT8 GEMM kernels).
"""

from __future__ import annotations

from typing import Any

import torch

from app.recipes import W8A8Params
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import require_mappings
from workers.methods.shared.calibration import oneshot_calibrated, require_calibration
from workers.methods.shared.layers import require_layers


class W8A8(CompressionMethod[W8A8Params]):
    name = "w8a8"
    params_type = W8A8Params

    def preflight(self, model: torch.nn.Module, params: W8A8Params) -> list[str]:
        from llmcompressor.modifiers.transform.smoothquant.utils import MAPPINGS_REGISTRY

        if params.smoothing_strength > 0:
            require_mappings(self.name, model, MAPPINGS_REGISTRY, " (or set smoothing_strength 0)")
        require_layers(self.name, model, params)
        return []

    def apply(self, stage: StageInput, params: W8A8Params) -> StageResult:
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        samples = require_calibration(self.name, stage)
        names = require_layers(self.name, stage.model, params)
        quantizer = GPTQModifier if params.weight_method == "gptq" else QuantizationModifier
        recipe: list[Any] = [
            quantizer(targets=list(params.targets), scheme="W8A8", ignore=list(params.ignore))
        ]
        if params.smoothing_strength > 0:
            recipe.insert(0, SmoothQuantModifier(smoothing_strength=params.smoothing_strength))
        oneshot_calibrated(stage, self.name, recipe, samples)
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                "quantized_layers": len(names),
                "weights": f"int8 per-channel sym ({params.weight_method})",
                "activations": "int8 per-token dynamic",
                "smoothing_strength": params.smoothing_strength,
                "calibration_samples": len(samples),
            },
        )
