"""How much each linear layer's quantization would cost the model, at each candidate setting.

score(layer, setting) = 1/2 * sum_i F_ii * (Q(W) - W)_i^2, where F is the diagonal of the
empirical Fisher information (the squared gradient of the language-model loss, averaged over
calibration samples) and Q the setting's round-to-nearest grid: the second-order Taylor estimate
of the loss increase when that layer alone is quantized (the score NVIDIA ModelOpt's
AutoQuantize ranks layers by). One backward pass per sample gives every layer's F at once; each
(layer, setting) pair is then weight-only arithmetic, so every layer is scored at every setting
for the price of a few training steps. GPTQ later does better than round-to-nearest on every
layer; the score ranks layers, it does not predict the final perplexity.

The grids are compressed-tensors' own (`calculate_qparams` / `fake_quantize`), the code that
saves the artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workers.methods.shared.layers import targeted_linears

SCALE_BITS = 16  # one bf16 scale per group (symmetric: no zero point stored)
SHAPE_BITS = 128  # and each quantized layer stores its weight's shape: two int64


@dataclass(frozen=True, order=True)
class Setting:
    """Symmetric integer weights, `bits` wide, one scale per `group_size` weights (0: one per
    output channel, i.e. per row of `in_features` weights)."""

    bits: int
    group_size: int = 0

    def bits_per_weight(self, in_features: int) -> float:
        return self.bits + SCALE_BITS / (self.group_size or in_features)

    def layer_bits(self, parameters: int, in_features: int) -> float:
        """What a layer of this size stores at this setting, as the files hold it (integers
        densely packed, scales, the weight's shape)."""
        return parameters * self.bits_per_weight(in_features) + SHAPE_BITS

    def fits(self, in_features: int) -> bool:
        return not self.group_size or in_features % self.group_size == 0

    @property
    def label(self) -> str:
        return f"W{self.bits} {f'g{self.group_size}' if self.group_size else 'channel'}"


@dataclass
class LayerScores:
    name: str
    parameters: int
    in_features: int
    scores: dict[Setting, float] = field(default_factory=dict)


def fisher_diagonal(
    model: torch.nn.Module,
    layers: list[tuple[str, torch.nn.Linear]],
    samples: list[list[int]],
    on_sample: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the loss per weight of `layers` (float32), one sample at a time;
    every other parameter is frozen for the passes and restored after."""
    device = next(model.parameters()).device
    was_training = model.training
    frozen = {p: p.requires_grad for p in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for _, module in layers:
        module.weight.requires_grad_(True)
    fisher = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in layers}
    model.eval()
    try:
        for index, sample in enumerate(samples):
            ids = torch.tensor([sample], device=device)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            for name, module in layers:
                grad = module.weight.grad
                if grad is not None:
                    fisher[name] += grad.float().square() / len(samples)
                module.weight.grad = None
            if on_sample:
                on_sample(index + 1, len(samples))
    finally:
        for parameter, flag in frozen.items():
            parameter.requires_grad_(flag)
        model.train(was_training)
    return fisher


def rounding_error(weight: torch.Tensor, setting: Setting) -> torch.Tensor:
    """Q(W) - W on the setting's symmetric group grid (scales from each group's range)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    w = weight.detach().float()
    group = setting.group_size or w.shape[1]
    args = QuantizationArgs(
        num_bits=setting.bits, type="int", symmetric=True, strategy="group", group_size=group
    )
    groups = w.reshape(w.shape[0], -1, group)
    scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    return fake_quantize(w, scale, zero, args) - w


def linear_shapes(
    model: torch.nn.Module, *, targets: list[str] | None = None, ignore: list[str] | None = None
) -> list[LayerScores]:
    """Every targeted linear layer's size, unscored: what a budget and a uniform scheme need,
    known before the sensitivity pass."""
    return shapes_of(targeted_linears(model, targets or ["Linear"], ignore or ["lm_head"]))


def shapes_of(layers: list[tuple[str, torch.nn.Linear]]) -> list[LayerScores]:
    return [LayerScores(name, m.weight.numel(), m.in_features) for name, m in layers]


def score_layers(
    model: torch.nn.Module,
    samples: list[list[int]],
    settings: list[Setting],
    *,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    on_sample: Callable[[int, int], None] | None = None,
) -> list[LayerScores]:
    """Every targeted linear layer's score at every setting whose group divides its rows (a
    setting that does not fit a layer is left out of its scores: the allocation never picks
    it there)."""
    layers = targeted_linears(model, targets or ["Linear"], ignore or ["lm_head"])
    fisher = fisher_diagonal(model, layers, samples, on_sample)
    found = []
    for (name, module), row in zip(layers, shapes_of(layers), strict=True):
        for setting in settings:
            if not setting.fits(module.in_features):
                continue
            error = rounding_error(module.weight, setting)
            row.scores[setting] = float(0.5 * (fisher[name] * error.square()).sum())
        found.append(row)
        del fisher[name]
    return found
