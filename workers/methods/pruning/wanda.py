"""Wanda (Sun et al. 2023): prune by |W| x ||X||, the weight times the norm of its input
channel over calibration data, compared within each output row; no weight update."""

from __future__ import annotations

from app.recipes import WandaParams
from workers.methods.base import StageInput, StageResult
from workers.methods.pruning.calibrated import modifier_scope, prune_calibrated
from workers.methods.pruning.common import SparsityMethod


class Wanda(SparsityMethod[WandaParams]):
    name = "wanda"
    params_type = WandaParams

    def apply(self, stage: StageInput, params: WandaParams) -> StageResult:
        from workers.methods.pruning.resumable import ResumableWandaModifier

        modifier = ResumableWandaModifier(**modifier_scope(stage.model, params))
        return prune_calibrated(self.name, stage, params, modifier)
