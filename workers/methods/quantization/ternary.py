"""Ternary (1.58-bit) weights, BitNet b1.58 absmean ternarization applied post-training.

Example stage: `{"method": "ternary", "params": {"group_size": 64}}`

Nothing in llm-compressor ternarizes, so the rounding is ours; the storage is not: a ternary
weight is a symmetric 2-bit integer (range [-2, 1]) that only uses {-1, 0, 1}, so
compressed-tensors' `pack-quantized` format stores it at 2 bits per weight plus one scale per
channel or group, and plain transformers loads it. We let llm-compressor attach a 2-bit scheme
(data-free, like RTN), then replace its min/max scale with the absmean scale and set every
weight to `clip(round(W / s), -1, 1) * s`. With `solver: "gptq"` the same scales and grid are
solved by GPTQ on calibration data (`masked_gptq.py` with the integers narrowed to {-1, 0, 1}):
each column's rounding error is compensated on the columns not yet rounded. With `solver:
"blockwise"` each decoder block's float weights and scales are trained on the grid to
reproduce the float block (`shared/block_reconstruction.py`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from app.recipes import TernaryParams, WeightQuantParams
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import int_weights, preflight_weight_quant
from workers.methods.shared.block_reconstruction import (
    BlockResume,
    Reconstruction,
    reconstruct_blocks,
)
from workers.methods.shared.calibration import (
    calibration_notes,
    oneshot_calibrated,
    require_calibration,
)
from workers.methods.shared.layer_progress import LayerProgress
from workers.methods.shared.layer_resume import job_layer_checkpoints, resume_from_checkpoints
from workers.methods.shared.layers import require_layers
from workers.methods.shared.quantization_aware import INTEGER_RANGE_ATTR
from workers.models.hf import pretrained

EPSILON = 1e-8


@torch.no_grad()
def absmean_ternarize(
    weight: torch.Tensor, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ternary values in {-1, 0, 1}, scales of shape [out, groups]) for a [out, in] weight."""
    rows, columns = weight.shape
    groups = weight.float().reshape(rows, -1, group_size or columns)
    scale = groups.abs().mean(dim=-1, keepdim=True).clamp_min(EPSILON)
    ternary = (groups / scale).round().clamp(-1, 1)
    return ternary.reshape(rows, columns), scale.squeeze(-1)


@torch.no_grad()
def least_error_scale(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Each group's scale (shape [out, groups]) among 0.5-2x its absmean with the least
    squared ternarization error: absmean's threshold (s / 2) zeroes too few weights for a
    bell-shaped group (TWN's optimum is ~0.6 sigma; absmean / 2 is ~0.4 sigma)."""
    rows, columns = weight.shape
    groups = weight.float().reshape(rows, -1, group_size or columns)
    absmean = groups.abs().mean(dim=-1, keepdim=True).clamp_min(EPSILON)
    best, best_error = absmean, torch.full_like(absmean, float("inf"))
    for factor in torch.linspace(0.5, 2.0, 31).tolist():
        scale = absmean * factor
        error = ((groups / scale).round().clamp(-1, 1) * scale - groups).pow(2).sum(-1, True)
        better = error < best_error
        best, best_error = torch.where(better, scale, best), torch.where(better, error, best_error)
    return best.squeeze(-1)


def _attach_scheme(
    stage: StageInput, params: TernaryParams, scheme: Any, names: list[str]
) -> list[Any]:
    """llm-compressor attaches the 2-bit scheme and its scale tensors (data-free, like RTN);
    the weights stay float. Returns the targeted modules."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    oneshot(
        model=pretrained(stage.model),
        recipe=QuantizationModifier(config_groups={"group_0": scheme}, ignore=list(params.ignore)),
    )
    modules = dict(stage.model.named_modules())
    return [modules[name] for name in names]


class Ternary(CompressionMethod[TernaryParams]):
    name = "ternary"
    params_type = TernaryParams

    def preflight(self, model: torch.nn.Module, params: TernaryParams) -> list[str]:
        # Same layer and group-size checks as the integer methods, at 2 bits.
        as_int = WeightQuantParams(
            bits=2, group_size=params.group_size, targets=params.targets, ignore=params.ignore
        )
        return preflight_weight_quant(self.name, model, as_int)

    def apply(self, stage: StageInput, params: TernaryParams) -> StageResult:
        from compressed_tensors.quantization import QuantizationScheme

        names = require_layers(self.name, stage.model, params)
        scheme = QuantizationScheme(
            targets=list(params.targets), weights=int_weights(2, params.group_size, True)
        )
        modules = dict(stage.model.named_modules())
        for name in names:
            # Training on this grid (block-wise reconstruction, quantization-aware
            # distillation) must keep {-1, 0, 1}, not the 2-bit storage's [-2, 1].
            setattr(modules[name], INTEGER_RANGE_ATTR, (-1, 1))
        if params.solver == "gptq":
            notes = self._solve_gptq(stage, params, scheme)
        elif params.solver == "blockwise":
            notes = self._solve_blockwise(stage, params, scheme, names)
        else:
            notes = self._round(stage, params, scheme, names)
        zeros = total = 0
        for name in names:
            module = modules[name]
            scale = module.weight_scale.float().repeat_interleave(
                params.group_size or module.weight.shape[1], dim=1
            )
            zeros += int(((module.weight.float() / scale).round() == 0).sum())
            total += module.weight.numel()
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                "quantized_layers": len(names),
                "solver": params.solver,
                "scale": (
                    "trained from the least-error one"
                    if params.solver == "blockwise"
                    else "absmean"
                )
                + (" per group" if params.group_size else " per channel"),
                "zero_fraction": round(zeros / total, 4),
                **notes,
            },
        )

    @staticmethod
    def _round(
        stage: StageInput, params: TernaryParams, scheme: Any, names: list[str]
    ) -> dict[str, Any]:
        """Each weight to the nearest of -s, 0, s (BitNet b1.58's absmean ternarization)."""
        modules = _attach_scheme(stage, params, scheme, names)
        for module in modules:
            ternary, scale = absmean_ternarize(module.weight, params.group_size)
            module.weight_scale.data = scale.reshape(module.weight_scale.shape).to(
                module.weight_scale.dtype
            )
            expanded = scale.repeat_interleave(params.group_size or ternary.shape[1], dim=1)
            module.weight.data = (ternary * expanded).to(module.weight.dtype)
        return {}

    def _solve_blockwise(
        self, stage: StageInput, params: TernaryParams, scheme: Any, names: list[str]
    ) -> dict[str, Any]:
        """Scales from the least-squares search, then each decoder block's float weights (the
        latent weights behind the integers) and scales trained to reproduce the float block
        (`shared/block_reconstruction.py`); the weights end on the grid."""
        samples = require_calibration(self.name, stage)
        for module in _attach_scheme(stage, params, scheme, names):
            scale = least_error_scale(module.weight, params.group_size)
            module.weight_scale.data = scale.reshape(module.weight_scale.shape).to(
                module.weight_scale.dtype
            )
        progress = LayerProgress(stage, self.name)
        progress.started = time.monotonic()

        def on_block(index: int, blocks: int) -> None:
            progress.layers = blocks
            progress.report(index)

        point = job_layer_checkpoints(stage, self.name, params, samples)
        notes = reconstruct_blocks(
            stage.model,
            samples,
            Reconstruction(
                epochs=params.epochs, learning_rate=params.learning_rate, seed=stage.seed
            ),
            check=stage.ctx.check if stage.ctx else None,
            on_block=on_block,
            masks=stage.masks,
            resume=BlockResume(point.checkpoints, point.restored, point.on_saved)
            if point
            else None,
        )
        return {**notes, **(point.notes if point else {}), **calibration_notes(samples)}

    def _solve_gptq(self, stage: StageInput, params: TernaryParams, scheme: Any) -> dict[str, Any]:
        """GPTQ on the ternary grid: the absmean scales of the weights as they come, integers in
        {-1, 0, 1}, each column's rounding error compensated on the later columns (mask-aware
        after a sparsity stage), layer checkpoints and resume as for `gptq`."""
        from workers.methods.quantization.gptq_resume import ResumableGPTQModifier

        samples = require_calibration(self.name, stage)
        modifier = ResumableGPTQModifier(
            config_groups={"group_0": scheme},
            ignore=list(params.ignore),
            dampening_frac=params.dampening_frac,
        )
        modifier.narrow_grid(
            (-1, 1), lambda module: absmean_ternarize(module.weight, params.group_size)[1]
        )
        if stage.masks:
            modifier.keep_masks(stage.model, stage.masks)
        notes = resume_from_checkpoints(stage, self.name, modifier, params, samples)
        oneshot_calibrated(stage, self.name, modifier, samples)
        return {**notes, **calibration_notes(samples)}
