"""Activation-aware low-rank factorization (the whitening of SVD-LLM, Wang et al. 2024).

For a Linear W (out x in) with calibration inputs X, the best rank-r replacement for the
*outputs* minimises ||(W - W') X||, not ||W - W'||. With the Cholesky factor S of the inputs'
second moment (X Xᵀ = S Sᵀ), ||(W - W') X|| = ||(W - W') S|| up to a rotation, so truncating the
SVD of W S = U Σ Vᵀ and mapping back gives it: W' = (U_r Σ_r^½)(Σ_r^½ V_rᵀ S⁻¹) = up @ down.
No library in our stack does this (llm-compressor has no low-rank modifier); it is ~one SVD
per layer.
"""

from __future__ import annotations

from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.recipes import LowRankParams
from workers.errors import JobFailure
from workers.formats.low_rank import LowRankLinear, replace_module
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.shared.calibration import require_calibration
from workers.methods.shared.layers import decoder_layers, require_layers, targeted_linears
from workers.models.hf import linear


def factored_targets(model: torch.nn.Module, params: LowRankParams) -> list[tuple[str, int]]:
    """(layer, rank) for every targeted decoder Linear where a factorization saves parameters."""
    count = len(decoder_layers(model))
    prefixes = tuple(f"model.layers.{i}." for i in range(count))
    chosen = []
    for name, module in targeted_linears(model, list(params.targets), list(params.ignore)):
        if not name.startswith(prefixes):
            continue
        rank = params.rank_for(module.out_features, module.in_features)
        if rank * (module.out_features + module.in_features) < module.out_features * (
            module.in_features
        ):
            chosen.append((name, rank))
    return chosen


@torch.no_grad()
def input_second_moments(
    model: torch.nn.Module, names: list[str], samples: list[list[int]]
) -> dict[str, torch.Tensor]:
    """X Xᵀ / tokens of each layer's inputs over the calibration samples (float32). Layers that
    read the same input (q/k/v, gate/up) share one matrix."""
    modules = dict(model.named_modules())
    moments: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    # id of an input tensor in this forward -> (the layer that stored it, the tensor). Holding
    # the tensor keeps its id from being reused by a later, different input.
    seen: dict[int, tuple[str, torch.Tensor]] = {}
    alias: dict[str, str] = {}

    def hook(name: str):
        def accumulate(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            owner = seen.get(id(x))
            if owner is not None and owner[1] is x:
                alias[name] = owner[0]
                return
            seen[id(x)] = (name, x)
            flat = x.reshape(-1, x.shape[-1]).float()
            if name not in moments:
                moments[name] = torch.zeros(flat.shape[1], flat.shape[1], device=flat.device)
                tokens[name] = 0
            moments[name].addmm_(flat.T, flat)
            tokens[name] += flat.shape[0]

        return accumulate

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    try:
        for sample in samples:
            seen.clear()
            model(torch.tensor([sample], device=device))
    finally:
        for handle in handles:
            handle.remove()
    result = {name: moments[name] / tokens[name] for name in moments}
    for name, owner in alias.items():
        result.setdefault(name, result[owner])
    return result


@torch.no_grad()
def factorize(
    weight: torch.Tensor, moment: torch.Tensor, rank: int, dampening: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, relative output error on the calibration inputs)."""
    w = weight.float()
    h = moment.clone()
    h.diagonal().add_(dampening * h.diagonal().mean() + 1e-8)
    s = torch.linalg.cholesky(h)  # lower: h = s sᵀ
    u, sigma, vh = torch.linalg.svd(w @ s, full_matrices=False)
    root = sigma[:rank].sqrt()
    up = u[:, :rank] * root
    # down = Σ_r^½ V_rᵀ S⁻¹, i.e. solve downᵀ from Sᵀ downᵀ = V_r Σ_r^½.
    down = torch.linalg.solve_triangular(s.T, (vh[:rank].T * root), upper=True).T
    error = (w - up @ down) @ s
    relative = float(error.norm() / (w @ s).norm())
    return up, down, relative


class LowRank(CompressionMethod[LowRankParams]):
    name = "low_rank"
    params_type = LowRankParams

    def preflight(self, model: torch.nn.Module, params: LowRankParams) -> list[str]:
        require_layers(self.name, model, params)
        if not factored_targets(model, params):
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"{self.name}: at this budget no targeted layer gets smaller (a rank-r "
                "factorization of an out x in layer saves parameters only when "
                "r < out x in / (out + in)): lower param_ratio / rank_ratio",
            )
        return []

    @torch.no_grad()
    def apply(self, stage: StageInput, params: LowRankParams) -> StageResult:
        samples = require_calibration(self.name, stage)
        model = stage.model
        chosen = factored_targets(model, params)
        moments = input_second_moments(model, [n for n, _ in chosen], samples)
        errors: list[float] = []
        before = after = 0
        for name, rank in chosen:
            dense = linear(model, name)
            up, down, relative = factorize(dense.weight, moments[name], rank, params.dampening_frac)
            factored = LowRankLinear(
                dense.in_features, dense.out_features, rank, dense.bias is not None
            ).to(device=dense.weight.device, dtype=dense.weight.dtype)
            factored.up.weight.copy_(up)
            factored.down.weight.copy_(down)
            if dense.bias is not None:
                factored.up.bias.copy_(dense.bias)
            replace_module(model, name, factored)
            errors.append(relative)
            before += dense.weight.numel()
            after += up.numel() + down.numel()
        notes: dict[str, Any] = {
            "factored_layers": len(chosen),
            "ranks": sorted({r for _, r in chosen}),
            "factored_parameters_before": before,
            "factored_parameters_after": after,
            "mean_relative_output_error": round(sum(errors) / len(errors), 6),
            "max_relative_output_error": round(max(errors), 6),
            "calibration_samples": len(samples),
        }
        return StageResult(model=model, layout="low-rank", notes=notes)
