"""Wanda and SparseGPT through llm-compressor's modifiers: its sequential pipeline runs one
decoder layer at a time over the calibration samples (memory stays at one layer's activations),
prunes that layer, and feeds the pruned layer's output to the next. Each pruned layer is
checkpointed, so a retried job resumes at its first unfinished layer (`shared/layer_resume.py`)."""

from __future__ import annotations

from typing import Any

import torch

from app.recipes import SparsityParams
from workers.methods.base import StageInput, StageResult
from workers.methods.pruning.common import pruned_linears, sparsity_notes
from workers.methods.shared.calibration import (
    calibration_notes,
    oneshot_calibrated,
    require_calibration,
)
from workers.methods.shared.layer_resume import LayerResume, resume_from_checkpoints
from workers.methods.shared.layers import decoder_layers


def decoder_layer_classes(model: torch.nn.Module) -> list[str]:
    return sorted({type(layer).__name__ for layer in decoder_layers(model)})


def modifier_scope(model: torch.nn.Module, params: SparsityParams) -> dict[str, Any]:
    """llm-compressor's sparsity modifiers target whole decoder layers and prune every Linear
    inside; the Linears our targets/ignore leave out are passed as exact-name ignores."""
    names = set(pruned_linears(model, params))
    inside = [
        name
        for name, module in model.named_modules()
        if name.startswith("model.layers.") and isinstance(module, torch.nn.Linear)
    ]
    structure = params.mask_structure
    sparsity: float | list[float] = params.target_sparsity
    if params.layer_sparsity is not None:
        sparsity = list(params.layer_sparsity)
    return {
        "targets": decoder_layer_classes(model),
        "ignore": sorted(n for n in inside if n not in names),
        "sparsity": sparsity,
        "mask_structure": "0:0" if structure == "unstructured" else structure,
    }


def prune_calibrated(
    method: str, stage: StageInput, params: SparsityParams, modifier: LayerResume
) -> StageResult:
    samples = require_calibration(method, stage)
    resumed = resume_from_checkpoints(stage, method, modifier, params, samples)
    oneshot_calibrated(stage, method, modifier, samples)
    names = pruned_linears(stage.model, params)
    return StageResult(
        model=stage.model,
        masked_layers=names,
        sparse_storage=params.storage == "sparse",
        notes={
            **sparsity_notes(stage.model, names, params),
            **calibration_notes(samples),
            **resumed,
        },
    )
