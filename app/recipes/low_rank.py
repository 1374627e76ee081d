"""Parameters of low-rank factorization."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from app.recipes.common import LayerTargets
from app.recipes.cost import StageCost


class LowRankParams(LayerTargets):
    """Activation-aware SVD: each targeted Linear W (out x in) becomes two smaller ones,
    `up @ down` with rank r, chosen to minimise the error on calibration activations
    (SVD of W times the Cholesky factor of the inputs' second moment, as in SVD-LLM; the plain
    SVD would minimise the error on the weights, not on what the layer outputs).

    Give exactly one of `param_ratio` (each layer keeps this fraction of its parameters:
    r = ratio x out x in / (out + in)) or `rank_ratio` (r = ratio x min(out, in)). A layer where
    the factorization would not save parameters is left whole.

    Example stage: `{"method": "low_rank", "params": {"param_ratio": 0.7}}`.
    Plain transformers cannot load the result (the config has no factored layers): load it
    with `squash.load_pretrained(path)`.
    """

    # Exactly one budget (checked in _one_budget), declared for clients: a number in one of
    # them and null or absent in the other.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"param_ratio": {"type": "number"}}, "required": ["param_ratio"]},
            "then": {"properties": {"rank_ratio": {"type": "null"}}},
            "else": {"properties": {"rank_ratio": {"type": "number"}}, "required": ["rank_ratio"]},
        }
    )

    param_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="Fraction of each layer's parameters kept"
    )
    rank_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="Rank kept as a fraction of min(out, in)"
    )
    rank_multiple: int = Field(
        default=8, ge=1, le=256, description="Ranks are rounded down to a multiple of this"
    )
    dampening_frac: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Fraction of the mean diagonal added to the activation second moment "
        "before its Cholesky factorization",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> LowRankParams:
        if (self.param_ratio is None) == (self.rank_ratio is None):
            raise ValueError("give exactly one of param_ratio and rank_ratio")
        return self

    def rank_for(self, out_features: int, in_features: int) -> int:
        if self.param_ratio is not None:
            rank = self.param_ratio * out_features * in_features / (out_features + in_features)
        else:
            rank = (self.rank_ratio or 0) * min(out_features, in_features)
        return max(self.rank_multiple, int(rank) // self.rank_multiple * self.rank_multiple)

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=1.0, hessians=True)
