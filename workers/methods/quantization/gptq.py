"""GPTQ: one-shot weight quantization that updates the not-yet-quantized weights of each layer
to cancel the error of the ones already rounded, using the layer's input Hessian (X Xᵀ) from
calibration data.

Example stage: `{"method": "gptq", "params": {"bits": 4, "group_size": 64, "actorder": "static"}}`

llm-compressor's GPTQModifier does the work (its sequential pipeline runs one decoder layer at a
time, so calibration memory stays at one layer's activations), with layer checkpoints so a
retried job resumes at its first unfinished layer (`workers/methods/shared/layer_resume.py`);
the output format is the same compressed-tensors `pack-quantized` checkpoint as RTN.

After a sparsity stage the solve is mask-aware (`masked_gptq.py`): pruned weights stay exactly
zero and the error of keeping them there is compensated on the surviving weights, instead of
the library's solve filling them in and the recipe zeroing them again uncompensated.
"""

from __future__ import annotations

import torch

from app.recipes import GptqParams
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import preflight_weight_quant, weight_quant_plan
from workers.methods.shared.calibration import (
    calibration_notes,
    oneshot_calibrated,
    require_calibration,
)
from workers.methods.shared.layer_resume import resume_from_checkpoints


class Gptq(CompressionMethod[GptqParams]):
    name = "gptq"
    params_type = GptqParams

    def preflight(self, model: torch.nn.Module, params: GptqParams) -> list[str]:
        return preflight_weight_quant(self.name, model, params)

    def apply(self, stage: StageInput, params: GptqParams) -> StageResult:
        from workers.methods.quantization.gptq_resume import ResumableGPTQModifier

        samples = require_calibration(self.name, stage)
        groups, notes = weight_quant_plan(stage.model, params)
        modifier = ResumableGPTQModifier(
            config_groups=groups,
            ignore=list(params.ignore),
            dampening_frac=params.dampening_frac,
            block_size=params.block_size,
        )
        if stage.masks:
            modifier.keep_masks(stage.model, stage.masks)
            notes["mask_aware_layers"] = len(stage.masks)
        notes.update(resume_from_checkpoints(stage, self.name, modifier, params, samples))
        oneshot_calibrated(stage, self.name, modifier, samples)
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                **notes,
                **calibration_notes(samples),
            },
        )
