"""A layer-wise calibrated stage run in-process with layer checkpoints attached, through the
same resumable modifiers the worker uses (tests/unit/test_layer_resume.py, bench/resume.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from app.recipes import GptqParams, SparseGptParams, WandaParams
from workers.methods.base import StageInput
from workers.methods.shared.calibration import oneshot_calibrated
from workers.methods.shared.layer_checkpoints import LayerCheckpoints
from workers.methods.shared.layer_resume import LayerResume

LAYER_TENSORS = ("weight", "weight_scale", "weight_zero_point")


def resumable_modifier(
    method: str, model: torch.nn.Module, params: GptqParams | SparseGptParams | WandaParams
) -> LayerResume:
    if isinstance(params, GptqParams):
        from workers.methods.quantization.common import weight_quant_plan
        from workers.methods.quantization.gptq_resume import ResumableGPTQModifier

        groups, _ = weight_quant_plan(model, params)
        return ResumableGPTQModifier(
            config_groups=groups, ignore=list(params.ignore), block_size=params.block_size
        )
    from workers.methods.pruning.calibrated import modifier_scope
    from workers.methods.pruning.resumable import (
        ResumableSparseGPTModifier,
        ResumableWandaModifier,
    )

    if isinstance(params, SparseGptParams):
        return ResumableSparseGPTModifier(**modifier_scope(model, params))
    return ResumableWandaModifier(**modifier_scope(model, params))


def run_layerwise(
    model_dir: Path,
    samples: list[list[int]],
    params: GptqParams | SparseGptParams | WandaParams,
    checkpoints: LayerCheckpoints,
    restored: dict[int, Any],
) -> tuple[dict[str, torch.Tensor], list[int], list[str], float]:
    """Returns every layer tensor, the layers this run saved, the modules it solved (took
    calibration statistics for), and the stage's seconds."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    method = type(params).__name__
    modifier = resumable_modifier(method, model, params)
    saved: list[int] = []
    solved: list[str] = []
    compress = modifier.compress_modules  # type: ignore[attr-defined]

    def recording() -> None:
        names = modifier._module_names  # type: ignore[attr-defined]
        solved.extend(names[m] for m in modifier._num_samples)  # type: ignore[attr-defined]
        compress()

    object.__setattr__(modifier, "compress_modules", recording)
    modifier.attach(model, checkpoints, restored, lambda index, _n: saved.append(index))
    started = time.perf_counter()
    oneshot_calibrated(StageInput(model, None, samples), method, modifier, samples)
    seconds = time.perf_counter() - started
    tensors = {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if name.endswith(LAYER_TENSORS)
    }
    return tensors, saved, solved, seconds
