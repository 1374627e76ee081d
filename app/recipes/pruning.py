"""Parameters of the pruning methods: unstructured / N:M sparsity and structured removal."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from app.recipes.common import LayerTargets, MethodParams
from app.recipes.cost import StageCost

NM_RE = re.compile(r"^(\d+):(\d+)$")
MAX_M = 64


def parse_mask_structure(mask_structure: str) -> tuple[int, int] | None:
    """(N, M) for an `N:M` mask (N zeros in every M consecutive input weights), None otherwise."""
    found = NM_RE.match(mask_structure)
    return (int(found[1]), int(found[2])) if found else None


class SparsityParams(LayerTargets):
    """Shared by the unstructured / semi-structured (N:M) pruning methods."""

    sparsity: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of each targeted layer's weights set to zero; null = 0.5, or N/M "
        "for an N:M mask",
    )
    mask_structure: str = Field(
        default="unstructured",
        pattern=r"^(unstructured|\d+:\d+)$",
        description="`unstructured`, or `N:M`: N zeros in every M consecutive weights of a row "
        "(`2:4` is the pattern NVIDIA sparse tensor cores run). M must divide every targeted "
        "layer's input size",
    )
    layer_sparsity: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Non-uniform sparsity: one value per decoder layer, in order (unstructured "
        "masks only). Overrides `sparsity`",
    )
    storage: Literal["sparse", "dense"] = Field(
        default="sparse",
        description="`sparse`: the saved weights keep only their nonzeros plus a 1-bit mask, so "
        "the artifact is smaller on disk; it loads with `squash.load_pretrained(path)`. "
        "`dense`: zeros are stored; loads with plain transformers and vLLM. A later "
        "quantization stage keeps the mask and is stored sparse too",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SparsityParams:
        pattern = parse_mask_structure(self.mask_structure)
        if pattern is not None:
            n, m = pattern
            if not 0 < n < m <= MAX_M:
                raise ValueError(f"mask_structure N:M needs 0 < N < M <= {MAX_M}")
            if self.sparsity is not None and abs(self.sparsity - n / m) > 1e-9:
                raise ValueError(
                    f"sparsity {self.sparsity} contradicts mask_structure {self.mask_structure} "
                    f"(which is {n / m:g}): leave sparsity out"
                )
            if self.layer_sparsity is not None:
                raise ValueError("layer_sparsity needs an unstructured mask")
        return self

    @property
    def target_sparsity(self) -> float:
        pattern = parse_mask_structure(self.mask_structure)
        if pattern is not None:
            return pattern[0] / pattern[1]
        return 0.5 if self.sparsity is None else self.sparsity


class MagnitudeParams(SparsityParams):
    """Magnitude pruning: zero the smallest |W| of each layer (or of each group of M). No data.

    Example stage: `{"method": "magnitude", "params": {"sparsity": 0.5}}`. The baseline the
    calibrated methods are measured against.
    """


class WandaParams(SparsityParams):
    """Wanda: zero the weights with the smallest |W| x ||X|| (input-activation norm from
    calibration data), compared within each output row. No weight update.

    Example stage: `{"method": "wanda", "params": {"mask_structure": "2:4"}}`.
    """

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=2.0)


class SparseGptParams(SparsityParams):
    """SparseGPT: one-shot pruning that updates the remaining weights of each layer to cancel
    the error of the removed ones, using the layer's input Hessian from calibration data.

    Example stage: `{"method": "sparsegpt", "params": {"sparsity": 0.5}}`.
    """

    dampening_frac: float = Field(
        default=0.01, gt=0, lt=1, description="Fraction of the mean Hessian diagonal added"
    )
    block_size: int = Field(default=128, ge=1, le=4096, description="Columns per update block")

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=2.0, hessians=True)


class StructuredParams(MethodParams):
    """Structured pruning: remove whole attention heads, MLP channels and decoder layers, ranked
    by importance measured on calibration data, so the saved model is a smaller dense model
    (smaller config) that plain transformers loads and that runs faster everywhere.

    The same number of heads / channels is removed from every layer (the config holds one size
    for all layers); which ones is chosen per layer. Attention heads respect grouped-query
    attention: `query_heads_per_group` removes that many query heads from every key/value
    group, `kv_groups` removes whole key/value groups with their query heads.
    Layers are ranked by how little they change their input (1 - cosine similarity of a block's
    input and output hidden states, as in ShortGPT).

    Example stage: `{"method": "structured", "params": {"mlp_channels": 0.25, "layers": 4}}`.
    Quality drops without retraining; distillation (a later stage) recovers it.
    """

    mlp_channels: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of MLP intermediate channels removed"
    )
    query_heads_per_group: int = Field(
        default=0, ge=0, le=64, description="Query heads removed from every key/value group"
    )
    kv_groups: int = Field(
        default=0, ge=0, le=64, description="Whole key/value groups removed per layer"
    )
    layers: int = Field(default=0, ge=0, le=512, description="Decoder layers removed")
    channel_multiple: int = Field(
        default=8,
        ge=1,
        le=256,
        description="The kept MLP channel count is rounded down to a multiple of this (fast "
        "kernels and group-wise quantization want round sizes)",
    )

    @model_validator(mode="after")
    def _removes_something(self) -> StructuredParams:
        if not (self.mlp_channels or self.query_heads_per_group or self.kv_groups or self.layers):
            raise ValueError(
                "set at least one of mlp_channels, query_heads_per_group, kv_groups, layers"
            )
        return self

    def kept_channels(self, intermediate_size: int) -> int:
        """MLP channels kept per layer (the worker and the submission check share this)."""
        kept = int(intermediate_size * (1 - self.mlp_channels))
        return max(self.channel_multiple, kept // self.channel_multiple * self.channel_multiple)

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=1.0)
