"""Parameters of the quantization methods (one model per method; see `catalog.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from app.recipes.common import GroupSize, LayerTargets, MethodParams, check_patterns
from app.recipes.cost import StageCost

IntBits = Literal[2, 3, 4, 8]
MAX_OVERRIDES = 32
# How each group's scale (and zero point) is chosen: `minmax` covers the group's range;
# `mse` shrinks it to the clipping that minimizes the rounding error; `imatrix` weighs that
# error by each input channel's mean squared activation on the calibration data (llama.cpp's
# importance matrix), so RTN with it reads calibration samples.
ScaleSearch = Literal["minmax", "mse", "imatrix"]


class LayerOverride(MethodParams):
    """Mixed precision: the layers matched here use these settings instead of the stage's.

    Example: `{"targets": ["re:.*down_proj", "re:model\\.layers\\.(0|29)\\..*"], "bits": 8}`.
    When several overrides match a layer, the last one wins.
    """

    targets: list[str] = Field(
        min_length=1, max_length=64, description="Layer names or `re:` name patterns"
    )
    bits: IntBits = Field(description="Bits per weight for these layers")
    group_size: GroupSize | Literal["channel"] | None = Field(
        default=None,
        description="Weights per scale; `channel` = one scale per output channel; "
        "null = the stage's group_size",
    )
    symmetric: bool | None = Field(default=None, description="null = the stage's setting")

    @field_validator("targets")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return check_patterns(patterns)


class WeightQuantParams(LayerTargets):
    """Integer weight-only quantization settings shared by RTN, GPTQ and AWQ."""

    bits: IntBits = Field(
        default=8,
        description="Bits per weight. 2 and 3 bits are stored densely packed (3 bits per weight "
        "on disk, plus scales)",
    )
    group_size: GroupSize | None = Field(
        default=None,
        description="Weights per scale along the input dimension; null = one scale per "
        "output channel. Must divide every quantized layer's input size.",
    )
    symmetric: bool = Field(default=True, description="Symmetric (no zero point) or asymmetric")
    overrides: list[LayerOverride] = Field(
        default=[],
        max_length=MAX_OVERRIDES,
        description="Mixed precision: per-layer bits/group size, e.g. keep down_proj at 8 bits",
    )
    scale_search: ScaleSearch = Field(
        default="minmax",
        description="How scales are chosen: `minmax` (the group's range), `mse` (the clipping "
        "with the least rounding error), `imatrix` (that error weighted by each input "
        "channel's activation energy on the calibration data). Same stored format.",
    )


class RtnParams(WeightQuantParams):
    """Round-to-nearest weight-only integer quantization (the PTQ baseline).

    Example stage: `{"method": "rtn", "params": {"bits": 4, "group_size": 64}}`.
    Stored in the compressed-tensors `pack-quantized` format, which transformers loads with
    `from_pretrained` and vLLM serves.
    """

    def cost(self) -> StageCost:
        if self.scale_search == "imatrix":  # one calibration pass for the activation energy
            return StageCost(calibration_passes=2.0)
        return StageCost(offloadable=True)


class GptqParams(WeightQuantParams):
    """GPTQ: one-shot second-order weight quantization on calibration data.

    Example stage: `{"method": "gptq", "params": {"bits": 4, "group_size": 64}}`. Uses the job's
    `calibration` (num_samples sequences of max_seq_length tokens). Same storage as RTN.
    """

    actorder: Literal["weight", "static"] | None = Field(
        default=None,
        description="Activation ordering: quantize columns by decreasing Hessian diagonal "
        "during calibration (`static` is an alias of `weight`; the stored format is unchanged). "
        "compressed-tensors 0.19 removed the `group` ordering.",
    )
    dampening_frac: float = Field(
        default=0.01, gt=0, lt=1, description="Fraction of the mean Hessian diagonal added"
    )
    block_size: int = Field(default=128, ge=1, le=4096, description="Columns per update block")

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=2.0, hessians=True, offloadable=True)


class AutoRoundParams(WeightQuantParams):
    """AutoRound: signed-gradient descent on each weight's rounding offset and each group's
    clipping range, one decoder layer at a time, to minimize the layer's output error on the
    calibration data (Intel's auto-round through llm-compressor's AutoRoundModifier).

    Example stage: `{"method": "autoround", "params": {"bits": 3, "group_size": 64}}`. Best at
    3 and 2 bits, where round-to-nearest and GPTQ lose most; same storage as RTN/GPTQ. Each
    decoder layer runs `iters` forward and backward passes over `batch_size` samples: slower than
    GPTQ (minutes per billion parameters on a GPU, far more on CPU).
    """

    bits: IntBits = Field(default=4, description="Bits per weight")
    group_size: GroupSize | None = Field(default=128, description="Weights per scale")
    iters: int = Field(default=200, ge=1, le=2000, description="Tuning steps per decoder layer")
    batch_size: int = Field(default=8, ge=1, le=256, description="Samples per tuning step")
    lr: float | None = Field(
        default=None, gt=0, le=1, description="Step size; null = auto-round's 1 / iters"
    )
    scale_search: Literal["minmax"] = Field(
        default="minmax", description="AutoRound learns each group's clipping itself"
    )

    def cost(self) -> StageCost:
        # Each step is one forward and backward (~3 forwards) of a layer over batch_size
        # samples; counted against the 64 samples of a default calibration set.
        return StageCost(
            calibration_passes=2.0 + 3.0 * self.iters * self.batch_size / 64,
            block_training_samples=self.batch_size,
        )


class AwqParams(WeightQuantParams):
    """AWQ: activation-aware weight quantization. Scales salient input channels (found from
    calibration activations) before rounding, folding the inverse scale into the previous
    layer, so no extra op runs at inference.

    Example stage: `{"method": "awq", "params": {"bits": 4, "group_size": 64}}`. Asymmetric by
    default, as in the AWQ paper. Same storage as RTN.
    """

    bits: IntBits = Field(default=4, description="Bits per weight")
    group_size: GroupSize | None = Field(default=128, description="Weights per scale")
    symmetric: bool = Field(default=False, description="Symmetric or asymmetric (default)")
    duo_scaling: bool = Field(
        default=True, description="Use weight magnitudes as well as activations for the scales"
    )
    n_grid: int = Field(default=20, ge=1, le=100, description="Scale exponents searched per layer")

    def cost(self) -> StageCost:
        return StageCost(calibration_passes=2.0 + self.n_grid)  # one block forward per grid point


class W8A8Params(LayerTargets):
    """SmoothQuant + INT8 W8A8: migrate activation outliers into the weights (per-channel
    smoothing), then INT8 weights (per output channel) and dynamic per-token INT8 activations.

    Example stage: `{"method": "w8a8", "params": {"smoothing_strength": 0.8}}`. Stored in the
    compressed-tensors `int-quantized` format (vLLM runs it with INT8 GEMM kernels).
    """

    smoothing_strength: float = Field(
        default=0.8, ge=0, le=1, description="Share of activation scale moved into the weights"
    )
    weight_method: Literal["gptq", "rtn"] = Field(
        default="gptq", description="How the INT8 weights are rounded after smoothing"
    )

    def cost(self) -> StageCost:
        smoothing = 1.0 if self.smoothing_strength > 0 else 0.0
        return StageCost(calibration_passes=2.0 + smoothing, hessians=self.weight_method == "gptq")


class Fp8Params(LayerTargets):
    """FP8 (E4M3) weights and activations.

    Example stage: `{"method": "fp8", "params": {"activations": "dynamic"}}`. `dynamic`: one weight
    scale per output channel, activation scales computed per token at run time (no calibration).
    `static`: per-tensor weight and activation scales from calibration. `kv_cache` also stores
    the attention KV cache in FP8 (per-tensor scales from calibration). Producing FP8 needs no
    GPU; serving it fast needs one with FP8 support (Hopper/Ada or newer).
    """

    activations: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="Per-token dynamic or calibrated per-tensor activation scales",
    )
    kv_cache: bool = Field(default=False, description="Also quantize the KV cache to FP8")

    def cost(self) -> StageCost:
        calibrated = self.activations == "static" or self.kv_cache
        return StageCost(calibration_passes=2.0 if calibrated else 0.0)


class TernaryParams(LayerTargets):
    """Ternary (1.58-bit) weights by BitNet b1.58 absmean ternarization, post-training.

    Each weight becomes -1, 0 or +1 times a scale `s = mean(|W|)` of its output channel (or
    group): `W_t = clip(round(W / s), -1, 1)`. Stored as 2-bit compressed-tensors `pack-quantized`
    (loads with plain transformers). Without training it loses much quality (measured in the
    README); recovering it is what distillation is for (a `distill` stage after it trains on the
    ternary grid). `solver: "gptq"` rounds with GPTQ's error compensation on calibration data
    instead of independently (same scales, same format): a far better start for that training.
    `solver: "blockwise"` trains each decoder block's latent weights and scales on the ternary
    grid (straight-through rounding), one block at a time, to reproduce the float block's
    outputs on the calibration samples (EfficientQAT's Block-AP): minutes of CPU per 100M
    parameters, the best start for a `distill` stage.
    """

    group_size: GroupSize | None = Field(
        default=None,
        description="Weights per scale along the input dimension; null = per output channel",
    )
    solver: Literal["round", "gptq", "blockwise"] = Field(
        default="round",
        description="`round`: each weight to its nearest of -s, 0, s; `gptq`: one column at a "
        "time, the rounding error compensated on the columns not yet rounded (calibrated); "
        "`blockwise`: each decoder block's weights and scales trained to reproduce the float "
        "block's outputs (calibrated)",
    )
    epochs: int = Field(
        default=4, ge=1, le=100, description="blockwise: passes over the calibration samples"
    )
    learning_rate: float = Field(
        default=1e-4, gt=0, le=1, description="blockwise: AdamW's peak rate (cosine to zero)"
    )
    dampening_frac: float = Field(
        default=0.01, gt=0, lt=1, description="gptq: fraction of the mean Hessian diagonal added"
    )

    def cost(self) -> StageCost:
        if self.solver == "gptq":
            return StageCost(calibration_passes=2.0, hessians=True)
        if self.solver == "blockwise":
            # Per block: the float and quantized forwards, then epochs of forward + backward
            # (~3 forwards) over 4-sample batches, whose activations the backward keeps.
            return StageCost(calibration_passes=3.0 + 3.0 * self.epochs, block_training_samples=4)
        return StageCost()
