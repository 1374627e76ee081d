"""A search's candidates: recipes under the budget, built from the sensitivity scores.

In order of promise (the first `max_candidates` run):
1. the allocation at the budget, on the rotated model with the imatrix scale search (when the
   search may rotate: issue 22's methods, which carry most of the gain on SmolLM2);
2. the allocation at the budget with GPTQ's defaults (what the allocation alone buys);
3. the best uniform scheme within the budget (the baseline the pick must beat, and the simplest
   artifact to serve);
   with the pruning family, SparseGPT 50 % then GPTQ on the kept weights, stored sparse;
4. the first candidate's kind at lower budgets (budget - 0.5, - 1, - 1.5 bits), so the report's
   front shows what fewer bits cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.search.spec import SearchSpec
from workers.methods.quantization.common import VLLM_FAST_BITS, VLLM_FAST_GROUPS
from workers.search.allocation import BudgetTooSmall, allocate
from workers.search.recipe import stage_params
from workers.search.sensitivity import SHAPE_BITS, LayerScores, Setting

# One scale per group of these many weights (0: one per output channel).
GROUPS = (32, 64, 128, 0)
BITS = (2, 3, 4, 8)
LOWER_BUDGETS = (0.5, 1.0, 1.5)
# The pruning family's share of zeros (SparseGPT's default; the joint rows of bench/quality.py).
PRUNED_SPARSITY = 0.5
# Unquantized tensors (embeddings, norms) are stored at 16 bits; safetensors headers and the
# config are a few kilobytes.
UNQUANTIZED_BYTES_PER_PARAMETER = 2
FILE_OVERHEAD_BYTES = 64 * 1024


def grid(target_runtime: str) -> list[Setting]:
    """The settings a layer may get: for vLLM only those its fast kernels serve (the rules of
    the preflight's vLLM warnings, workers/methods/quantization/common.py); none for GGUF."""
    if target_runtime == "vllm":
        return [Setting(b, g or 0) for b in VLLM_FAST_BITS for g in VLLM_FAST_GROUPS]
    if target_runtime == "gguf":
        return []  # llama.cpp's presets, not integer grids: workers/search/gguf_plan.py
    return [Setting(b, g) for b in BITS for g in GROUPS]


@dataclass(frozen=True)
class Candidate:
    name: str
    recipe: list[dict[str, Any]]  # stages as a request writes them
    budget_bits: float
    planned_bits: float  # the average the allocation (or the uniform scheme) stores

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recipe": self.recipe,
            "budget_bits": self.budget_bits,
            "planned_bits": self.planned_bits,
        }


def budget_bits(spec: SearchSpec, layers: list[LayerScores], total_parameters: int) -> float:
    """The budget as average bits per quantized weight: the tighter of the two limits (bytes
    count the unquantized tensors at 16 bits first)."""
    limits = []
    if spec.budget.max_bits_per_weight is not None:
        limits.append(spec.budget.max_bits_per_weight)
    if spec.budget.max_checkpoint_bytes is not None:
        quantized = sum(row.parameters for row in layers)
        rest = (total_parameters - quantized) * UNQUANTIZED_BYTES_PER_PARAMETER
        room = spec.budget.max_checkpoint_bytes - rest - FILE_OVERHEAD_BYTES
        if room <= 0:
            raise BudgetTooSmall(
                f"max_checkpoint_bytes {spec.budget.max_checkpoint_bytes}: the unquantized "
                f"tensors alone take {rest} bytes"
            )
        limits.append(8 * room / quantized)
    return round(min(limits), 4)


def best_fitting(
    layers: list[LayerScores],
    budget: float,
    settings: list[Setting],
    layer_bits: Callable[[Setting, LayerScores], float],
    rank: Callable[[Setting, float], Any],
) -> tuple[Setting, float] | None:
    """The setting of highest `rank` that fits every layer and whose average stored bits
    (`layer_bits` per layer) hold the budget: (setting, average rounded as reported)."""
    total = sum(row.parameters for row in layers)
    best: tuple[Any, Setting, float] | None = None
    for setting in settings:
        if not all(setting.fits(row.in_features) for row in layers):
            continue
        average = sum(layer_bits(setting, row) for row in layers) / total
        key = rank(setting, average)
        if average <= budget + 1e-9 and (best is None or key > best[0]):
            best = (key, setting, round(average, 4))
    return None if best is None else best[1:]


def uniform_setting(
    layers: list[LayerScores], budget: float, settings: list[Setting]
) -> tuple[Setting, float] | None:
    """The uniform scheme with the most bits within the budget (fitting every layer)."""
    return best_fitting(
        layers,
        budget,
        settings,
        lambda setting, row: setting.layer_bits(row.parameters, row.in_features),
        lambda _, average: average,
    )


def uniform_candidate(
    layers: list[LayerScores], budget: float, settings: list[Setting]
) -> Candidate | None:
    """GPTQ's defaults at the uniform scheme: needs only the layers' sizes, so it can run
    while the sensitivity pass does (workers/search/start.py)."""
    found = uniform_setting(layers, budget, settings)
    if found is None:
        return None
    setting, bits = found
    params = {"bits": setting.bits, "group_size": setting.group_size or None}
    return Candidate(
        f"uniform gptq {setting.label}", [{"method": "gptq", "params": params}], budget, bits
    )


def uniform_runs_early(spec: SearchSpec) -> bool:
    """Whether the uniform candidate is among the first `max_candidates` whatever the
    sensitivity pass finds (it comes after one allocation, or two with rotation)."""
    return spec.max_candidates >= (3 if "rotation" in spec.families else 2)


def pruned_candidate(
    layers: list[LayerScores], budget: float, settings: list[Setting]
) -> Candidate | None:
    """SparseGPT at PRUNED_SPARSITY, then GPTQ (mask-aware: it keeps the pruned weights at
    zero) with the MSE scale search, at the most bits and finest groups whose sparse storage
    fits the budget: per weight a mask bit, the kept share of the integers and the (dense)
    scales (workers/formats/sparse_bitmask.py)."""

    def sparse_bits(setting: Setting, row: LayerScores) -> float:
        scales = setting.bits_per_weight(row.in_features) - setting.bits
        kept = (1 - PRUNED_SPARSITY) * setting.bits
        return row.parameters * (kept + 1 + scales) + SHAPE_BITS

    found = best_fitting(
        layers,
        budget,
        settings,
        sparse_bits,
        lambda setting, _: (setting.bits, -(setting.group_size or 10**9)),
    )
    if found is None:
        return None
    setting, average = found
    gptq = {"bits": setting.bits, "group_size": setting.group_size or None, "scale_search": "mse"}
    recipe = [
        {"method": "sparsegpt", "params": {"sparsity": PRUNED_SPARSITY}},
        {"method": "gptq", "params": gptq},
    ]
    name = f"sparsegpt {PRUNED_SPARSITY:.0%} + gptq {setting.label} mse"
    return Candidate(name, recipe, budget, average)


def allocated(
    name: str, layers: list[LayerScores], budget: float, *, rotate: bool, scale_search: str
) -> Candidate:
    found = allocate(layers, budget)
    gptq = {"method": "gptq", "params": stage_params(found, {"scale_search": scale_search})}
    recipe = [{"method": "rotate", "params": {}}, gptq] if rotate else [gptq]
    return Candidate(name, recipe, budget, found.bits_per_weight)


def plan_candidates(
    spec: SearchSpec,
    plain: list[LayerScores],
    rotated: list[LayerScores] | None,
    budget: float,
) -> list[Candidate]:
    """At most `spec.max_candidates`, best first. Raises BudgetTooSmall when not even the
    cheapest setting of every layer fits."""
    found: list[Candidate] = []
    if rotated is not None:
        label = f"rotate + allocated gptq imatrix <= {budget:g} b/w"
        found.append(allocated(label, rotated, budget, rotate=True, scale_search="imatrix"))
    found.append(
        allocated(
            f"allocated gptq <= {budget:g} b/w", plain, budget, rotate=False, scale_search="minmax"
        )
    )
    uniform = uniform_candidate(plain, budget, grid(spec.budget.target_runtime))
    if uniform is not None:
        found.append(uniform)
    pruned = (
        pruned_candidate(plain, budget, grid(spec.budget.target_runtime))
        if "pruning" in spec.families
        else None
    )
    if pruned is not None:
        found.append(pruned)
    layers, rotate = (rotated, True) if rotated is not None else (plain, False)
    for less in LOWER_BUDGETS:
        lower = round(budget - less, 4)
        kind = "rotate + allocated gptq imatrix" if rotate else "allocated gptq"
        try:
            found.append(
                allocated(
                    f"{kind} <= {lower:g} b/w",
                    layers,
                    lower,
                    rotate=rotate,
                    scale_search="imatrix" if rotate else "minmax",
                )
            )
        except BudgetTooSmall:
            break
    return found[: spec.max_candidates]
