"""Magnitude pruning: in each layer, zero the weights with the smallest |W| (or, for an N:M
mask, the N smallest of every M consecutive weights of a row). Needs no data.

Written here, not taken from llm-compressor: its MagnitudePruningModifier is a gradual schedule
for training (init/final sparsity over epochs); one-shot magnitude pruning is a top-k.
"""

from __future__ import annotations

import torch

from app.recipes import MagnitudeParams, parse_mask_structure
from workers.methods.base import StageInput, StageResult
from workers.methods.pruning.common import (
    SparsityMethod,
    pruned_linears,
    sparsity_notes,
    sparsity_of_layer,
)


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None):
    """True where the weight is kept."""
    scores = weight.abs().float()
    if pattern is not None:
        n, m = pattern
        groups = scores.reshape(weight.shape[0], -1, m)
        drop = groups.topk(n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return keep.reshape(weight.shape)
    # Per output row, as Wanda and SparseGPT compare: every row keeps the same share.
    k = int(weight.shape[1] * sparsity)
    drop = scores.topk(k, dim=1, largest=False).indices
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, drop, False)


class Magnitude(SparsityMethod[MagnitudeParams]):
    name = "magnitude"
    params_type = MagnitudeParams

    @torch.no_grad()
    def apply(self, stage: StageInput, params: MagnitudeParams) -> StageResult:
        names = pruned_linears(stage.model, params)
        modules = dict(stage.model.named_modules())
        pattern = parse_mask_structure(params.mask_structure)
        for name in names:
            weight = modules[name].weight
            weight.mul_(magnitude_mask(weight, sparsity_of_layer(params, name), pattern))
        return StageResult(
            model=stage.model,
            masked_layers=names,
            sparse_storage=params.storage == "sparse",
            notes=sparsity_notes(stage.model, names, params),
        )
