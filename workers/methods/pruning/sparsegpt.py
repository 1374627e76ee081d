"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning that picks the mask and updates the
remaining weights of each layer with the inverse input Hessian, so the layer's output on the
calibration data changes as little as possible."""

from __future__ import annotations

from app.recipes import SparseGptParams
from workers.methods.base import StageInput, StageResult
from workers.methods.pruning.calibrated import modifier_scope, prune_calibrated
from workers.methods.pruning.common import SparsityMethod


class SparseGpt(SparsityMethod[SparseGptParams]):
    name = "sparsegpt"
    params_type = SparseGptParams

    def apply(self, stage: StageInput, params: SparseGptParams) -> StageResult:
        from workers.methods.pruning.resumable import ResumableSparseGPTModifier

        modifier = ResumableSparseGPTModifier(
            **modifier_scope(stage.model, params),
            block_size=params.block_size,
            dampening_frac=params.dampening_frac,
        )
        return prune_calibrated(self.name, stage, params, modifier)
