"""Round-to-nearest weight-only quantization (RTN), the PTQ baseline.

Example stage: `{"method": "rtn", "params": {"bits": 4, "group_size": 64, "symmetric": true}}`

Uses llm-compressor's QuantizationModifier (data-free with the min/max or MSE observer; the
imatrix observer reads the calibration samples for each input channel's activation energy) and
saves through compressed-tensors, whose `pack-quantized` checkpoints load in transformers and
vLLM. Writing our own packing would give a format nothing else reads.
"""

from __future__ import annotations

import torch

from app.recipes import RtnParams
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import preflight_weight_quant, weight_quant_plan
from workers.methods.shared.calibration import (
    calibration_notes,
    oneshot_calibrated,
    require_calibration,
)
from workers.models.hf import pretrained


class RoundToNearest(CompressionMethod[RtnParams]):
    name = "rtn"
    params_type = RtnParams

    def preflight(self, model: torch.nn.Module, params: RtnParams) -> list[str]:
        return preflight_weight_quant(self.name, model, params)

    def apply(self, stage: StageInput, params: RtnParams) -> StageResult:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        groups, notes = weight_quant_plan(stage.model, params)
        modifier = QuantizationModifier(config_groups=groups, ignore=list(params.ignore))
        if self.needs_calibration(params):
            samples = require_calibration(self.name, stage)
            oneshot_calibrated(stage, self.name, modifier, samples)
            notes.update(calibration_notes(samples))
        else:
            oneshot(model=pretrained(stage.model), recipe=modifier)
        return StageResult(model=stage.model, save_format="compressed-tensors", notes=notes)
