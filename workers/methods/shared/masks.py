"""Keeping a sparsity stage's zeros through later stages (capture, then re-zero)."""

from __future__ import annotations

import torch


@torch.no_grad()
def capture_masks(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {name: modules[name].weight != 0 for name in names}


@torch.no_grad()
def reapply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Zero again the weights a later stage filled in (GPTQ's error feedback updates pruned
    weights too: llm-compressor's GPTQ has no mask option). Zero is on every integer grid
    (q = 0, or q = zero point), so the weights stay quantized. Returns how many were refilled."""
    modules = dict(model.named_modules())
    refilled = 0
    for name, mask in masks.items():
        weight = modules[name].weight
        refilled += int(((weight != 0) & ~mask).sum())
        weight.mul_(mask.to(weight.dtype))
    return refilled
