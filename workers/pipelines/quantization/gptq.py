"""GPTQ: one-shot weight quantization that updates the not-yet-quantized weights of each layer
to cancel the error of the ones already rounded, using the layer's input Hessian (X Xᵀ) from
calibration data.

Example stage: `{"method": "gptq", "params": {"bits": 4, "group_size": 64, "actorder": "static"}}`

llm-compressor's GPTQModifier does the work (its sequential pipeline runs one decoder layer at a
time, so calibration memory stays at one layer's activations); the output format is the same
compressed-tensors `pack-quantized` checkpoint as RTN.
"""

from __future__ import annotations

import torch

from app.jobs.state import ErrorCode
from app.recipes import GptqParams
from workers.errors import JobFailure
from workers.pipelines.base import CompressionMethod, StageInput, StageResult
from workers.pipelines.quantization.common import (
    preflight_weight_quant,
    quantization_scheme,
    targeted_linears,
)
from workers.pipelines.registry import register


def calibration_dataset(samples: list[list[int]]) -> object:
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]}
    )


@register
class Gptq(CompressionMethod):
    name = "gptq"
    params_type = GptqParams
    needs_calibration = True

    def preflight(self, model: torch.nn.Module, params: GptqParams) -> list[str]:  # type: ignore[override]
        return preflight_weight_quant(self.name, model, params)

    def apply(self, stage: StageInput, params: GptqParams) -> StageResult:  # type: ignore[override]
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier

        samples = stage.calibration_ids
        if not samples:
            raise JobFailure(
                ErrorCode.DATA_ERROR,
                "gptq: the calibration text yields no sample of calibration.max_seq_length tokens",
            )
        modifier = GPTQModifier(
            config_groups={"group_0": quantization_scheme(params)},
            ignore=list(params.ignore),
            dampening_frac=params.dampening_frac,
            block_size=params.block_size,
        )
        oneshot(
            model=stage.model,
            dataset=calibration_dataset(samples),
            recipe=modifier,
            max_seq_length=max(len(s) for s in samples),
            num_calibration_samples=len(samples),
        )
        quantized = len(targeted_linears(stage.model, list(params.targets), list(params.ignore)))
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                "quantized_layers": quantized,
                "bits": params.bits,
                "calibration_samples": len(samples),
                "calibration_tokens": sum(len(s) for s in samples),
            },
        )
