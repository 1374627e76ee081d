"""AutoRound (Cheng et al. 2024): each weight's rounding offset and each group's clipping range
tuned by signed gradient descent so that every decoder layer's output, with quantized weights,
matches the original layer's on the calibration samples.

Example stage: `{"method": "autoround", "params": {"bits": 3, "group_size": 64, "iters": 200}}`

llm-compressor's AutoRoundModifier runs Intel's auto-round one decoder layer at a time inside
the same sequential pipeline as GPTQ, and writes the tuned integers, scales and zero points
back as compressed-tensors parameters, so the artifact is the same `pack-quantized` checkpoint
as RTN and GPTQ (plain transformers loads it). `torch.compile` of the tuning loop is left off:
on CPU workers it compiles longer than it saves, and a compile failure would fail the job.
"""

from __future__ import annotations

import torch

from app.recipes import AutoRoundParams
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import preflight_weight_quant, weight_quant_plan
from workers.methods.shared.calibration import (
    calibration_notes,
    oneshot_calibrated,
    require_calibration,
)


class AutoRound(CompressionMethod[AutoRoundParams]):
    name = "autoround"
    params_type = AutoRoundParams

    def preflight(self, model: torch.nn.Module, params: AutoRoundParams) -> list[str]:
        return preflight_weight_quant(self.name, model, params)

    def apply(self, stage: StageInput, params: AutoRoundParams) -> StageResult:
        from llmcompressor.modifiers.autoround import AutoRoundModifier

        samples = require_calibration(self.name, stage)
        groups, notes = weight_quant_plan(stage.model, params)
        modifier = AutoRoundModifier(
            config_groups=groups,
            ignore=list(params.ignore),
            iters=params.iters,
            batch_size=min(params.batch_size, len(samples)),
            lr=params.lr,
            enable_torch_compile=False,
        )
        oneshot_calibrated(stage, self.name, modifier, samples)
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                **notes,
                "iters": params.iters,
                **calibration_notes(samples),
            },
        )
