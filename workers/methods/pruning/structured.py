"""Structured pruning: remove whole attention heads, MLP channels and decoder layers, so the
result is a smaller dense model with a smaller config that plain transformers loads.

Importance, measured in one calibration pass over the original model (no library in our stack
does structured pruning of decoder LMs; llm-compressor prunes unstructured and N:M only):
- decoder layer: 1 - cosine similarity of its input and output hidden states, averaged over
  tokens (ShortGPT's block influence); the least influential layers are removed;
- attention head: the squared norm of its contribution to o_proj's output (x_h W_o,hᵀ);
  a key/value group scores the sum of its query heads;
- MLP channel: ||a_j|| x ||W_down[:, j]||, the norm of the channel's activation over the
  calibration tokens times the norm of the weights that read it (Wanda's score, per channel).
The config holds one size for every layer, so each layer loses the same number of heads and
channels; which ones is decided per layer.
"""

from __future__ import annotations

import torch

from app.recipes import StructuredParams
from workers.evaluation.measure import parameter_count
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.shared.calibration import require_calibration
from workers.methods.shared.structured_pruning import (
    check_architecture,
    measure_importance,
    prune,
)


class Structured(CompressionMethod[StructuredParams]):
    name = "structured"
    params_type = StructuredParams

    def preflight(self, model: torch.nn.Module, params: StructuredParams) -> list[str]:
        check_architecture(model, params)
        return []

    @torch.no_grad()
    def apply(self, stage: StageInput, params: StructuredParams) -> StageResult:
        samples = require_calibration(self.name, stage)
        model = stage.model
        before = parameter_count(model)
        importance = measure_importance(model, samples)
        notes = prune(model, importance, params)
        after = parameter_count(model)
        notes.update(
            parameters=[before, after],
            removed_parameter_share=round(1 - after / before, 6),
            calibration_samples=len(samples),
        )
        return StageResult(model=model, notes=notes)
