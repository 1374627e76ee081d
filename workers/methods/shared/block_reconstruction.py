"""Block-wise reconstruction: each decoder block's quantized weights and scales trained, one
block at a time, to reproduce what the float block computes (EfficientQAT's Block-AP; the idea
of OmniQuant and AutoRound), before any end-to-end training.

Why: from a ternary start an end-to-end distillation spends its steps on a network whose every
layer is broken, and its gradient reaches the early layers through all of them. Trained one
block at a time, each block has its own target: the float block's output on the float model's
input, while its own input is what the already-quantized blocks before it compute, so it also
learns to undo their error. On SmolLM2 this took the rotated ternary model to perplexity 280
in 8 minutes of CPU, against 4,486 for GPTQ's solve (README, issue 22).

Why ours: AutoRound (llm-compressor's AutoRoundModifier, auto-round) trains block by block too,
but only a rounding offset within half a step of its own integer grids; nothing in the
libraries trains on the ternary grid {-1, 0, 1}. The forward is quantization-aware
distillation's (`quantization_aware.fake_quantized_weight`: straight-through rounding, LSQ
gradient to the scale, the module's integer range), so the integers it leaves are those a
later `distill` stage starts from, and `project_onto_grid` saves them exactly.

The loss is each token's squared error relative to the float output's squared norm, averaged
over tokens: a plain MSE is dominated by the few "massive activation" tokens (on SmolLM2 from
block 11 on, a few hundred times the others' magnitude), and trained only those.

Each trained block goes to the job's layer checkpoints (`BlockResume`): a retried attempt loads
the finished blocks and trains from the first missing one, ending tensor-equal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.methods.shared.layer_checkpoints import (
    LayerCheckpoints,
    layer_tensors,
    load_layer_tensors,
)
from workers.methods.shared.layers import decoder_layers
from workers.methods.shared.quantization_aware import (
    fake_quantized_weight,
    project_onto_grid,
    quantized_linears,
)

FORWARD_BATCH = 8
BLOCK_TENSORS = ("weight", "weight_scale")  # what a trained block's checkpoint holds


@dataclass(frozen=True)
class Reconstruction:
    epochs: int
    learning_rate: float
    # Tokens per optimizer step (whole samples, at least one). By tokens, not samples: on
    # SmolLM2 4 samples of 512 tokens a step (8 steps an epoch) left the ternary model at
    # perplexity 988, 4 of 256 (16 steps over the same tokens) at 313.
    batch_tokens: int = 1024
    seed: int = 0


class _Captured(Exception):
    """Raised by the first block's pre-hook: its inputs are caught, the rest need not run."""


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of |output - target|^2 / |target|^2 (see the module docstring)."""
    squared = (output - target).float().pow(2).sum(-1)
    return (squared / target.float().pow(2).sum(-1).clamp_min(1e-12)).mean()


def equal_length(samples: list[list[int]]) -> torch.Tensor:
    """The calibration samples cut to the shortest one's length (blocks run them batched)."""
    length = min(len(s) for s in samples)
    return torch.tensor([s[:length] for s in samples])


@torch.no_grad()
def first_block_inputs(
    model: torch.nn.Module, ids: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The hidden states entering block 0 for every sample, and the other arguments the model
    passes every block (rotary embeddings, causal mask), caught from a one-sample call so
    they broadcast over any batch."""
    layers = decoder_layers(model)
    caught: dict[str, Any] = {}

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        caught["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        caught["kwargs"] = kwargs
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    hidden, kwargs = [], {}
    try:
        for row in ids:
            try:
                model(row[None], use_cache=False)
            except _Captured:
                hidden.append(caught["hidden"])
                kwargs = caught["kwargs"]
    finally:
        handle.remove()
    return torch.cat(hidden), kwargs


def _run(block: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _run_all(block: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    return torch.cat(
        [
            _run(block, hidden[i : i + FORWARD_BATCH], kwargs)
            for i in range(0, len(hidden), FORWARD_BATCH)
        ]
    )


@contextmanager
def _forwards(modules: list[Any], make: Callable[[Any], Callable[..., Any]]) -> Iterator[None]:
    """Each module's forward replaced by `make(module)` for the duration (compressed-tensors
    wraps the forward of a quantized module on the instance; it is put back afterwards)."""
    saved = [module.__dict__.get("forward") for module in modules]
    for module in modules:
        module.forward = make(module)
    try:
        yield
    finally:
        for module, forward in zip(modules, saved, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _float_forward(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.nn.functional.linear(x, module.weight, module.bias)


def _quantized_forward(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.nn.functional.linear(x, fake_quantized_weight(module), module.bias)


@dataclass
class BlockResume:
    """Layer checkpoints for the blocks (`shared/layer_checkpoints.py`): each trained block's
    tensors are saved once it is on its grid, and the blocks an earlier attempt finished
    (`restored`, 0..k-1) are loaded instead of trained."""

    checkpoints: LayerCheckpoints | None
    restored: dict[int, Path]
    on_saved: Callable[[int, int], None] | None = None


def reconstruct_blocks(
    model: torch.nn.Module,
    samples: list[list[int]],
    settings: Reconstruction,
    check: Callable[[], None] | None = None,
    on_block: Callable[[int, int], None] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    resume: BlockResume | None = None,
) -> dict[str, Any]:
    """Train every decoder block's quantized Linears (weights behind the integers and their
    scales) block by block; afterwards each weight is on its grid, and an earlier sparsity
    stage's zeros (`masks`, by module name) are kept at every step. Returns notes: each block's
    relative output error before and after its training, and the seconds spent."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    quantized = {id(m) for m in quantized_linears(model).values()}
    named = dict(model.named_modules())
    keep = {id(named[name]): mask for name, mask in (masks or {}).items()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ids = equal_length(samples).to(device)
    float_input, kwargs = first_block_inputs(model, ids)
    # Each block trains in float32 (on a bfloat16 GPU model an AdamW step of 1e-4 is below
    # a weight's bfloat16 resolution) and goes back to its dtype afterwards: a ternary
    # weight, an integer times a 16-bit scale, is exact there.
    float_input = float_input.float()
    quantized_input = float_input.clone()
    generator = torch.Generator().manual_seed(settings.seed)
    fit = _Fit(settings, generator, keep, check, resume or BlockResume(None, {}))
    before, after = [], []
    layers = decoder_layers(model)
    for index, block in enumerate(layers):
        if on_block:
            on_block(index, len(layers))
        modules = {n: m for n, m in block.named_modules() if id(m) in quantized}
        dtype = next(block.parameters()).dtype
        block.float()
        with _forwards(list(modules.values()), _float_forward):
            target = _run_all(block, float_input, kwargs)
        with _forwards(list(modules.values()), _quantized_forward):
            before.append(float(relative_error(_run_all(block, quantized_input, kwargs), target)))
            fit.block(index, len(layers), block, modules, (quantized_input, target, kwargs))
            quantized_input = _run_all(block, quantized_input, kwargs)
        block.to(dtype)
        after.append(float(relative_error(quantized_input, target)))
        float_input = target
    return {
        "reconstruction": "block-wise",
        "reconstruction_epochs": settings.epochs,
        "reconstruction_samples": len(ids),
        "reconstruction_seconds": round(time.perf_counter() - started, 1),
        "block_error_before": [round(v, 5) for v in before],
        "block_error_after": [round(v, 5) for v in after],
    }


@dataclass
class _Fit:
    """What every block's fit shares: the settings, one sample-order generator for the whole
    stage, the sparsity masks (by module id), the job's check point and the resume point."""

    settings: Reconstruction
    generator: torch.Generator
    keep: dict[int, torch.Tensor]
    check: Callable[[], None] | None
    resume: BlockResume

    def block(
        self,
        index: int,
        blocks: int,
        block: torch.nn.Module,
        modules: dict[str, Any],
        data: tuple[torch.Tensor, torch.Tensor, dict[str, Any]],
    ) -> None:
        """Train the block (or load it, when an earlier attempt finished it), put it on its
        grid, and checkpoint it."""
        inputs, target, kwargs = data
        resume = self.resume
        if index in resume.restored:  # an earlier attempt trained it: load it, skip its draws
            load_layer_tensors(modules, LayerCheckpoints.load(resume.restored[index]))
            for _ in range(self.settings.epochs if modules else 0):
                torch.randperm(len(inputs), generator=self.generator)
        elif modules:  # a block the stage's `ignore` left whole has nothing to train
            masks = [(m, self.keep[id(m)]) for m in modules.values() if id(m) in self.keep]
            _train_block(
                block,
                list(modules.values()),
                masks,
                inputs,
                target,
                kwargs,
                self.settings,
                self.generator,
                self.check,
            )
        project_onto_grid(block)
        if index not in resume.restored and resume.checkpoints is not None:
            resume.checkpoints.save(index, layer_tensors(modules, BLOCK_TENSORS))
            if resume.on_saved:
                resume.on_saved(index, blocks)


def _train_block(
    block: torch.nn.Module,
    modules: list[Any],
    masks: list[tuple[Any, torch.Tensor]],
    inputs: torch.Tensor,
    target: torch.Tensor,
    kwargs: dict[str, Any],
    settings: Reconstruction,
    generator: torch.Generator,
    check: Callable[[], None] | None,
) -> None:
    """AdamW on the block's weights and scales, cosine-decayed to zero over its epochs."""
    trained = [t for m in modules for t in (m.weight, m.weight_scale)]
    for tensor in trained:
        tensor.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=0.0)
    batch_size = max(1, settings.batch_tokens // inputs.shape[1])
    total = settings.epochs * math.ceil(len(inputs) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            if check:
                check()  # the job's cancel and lease check point
            rows = order[start : start + batch_size].to(inputs.device)
            loss = relative_error(_run(block, inputs[rows], kwargs), target[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for module, mask in masks:  # a pruned weight stays zero (zero is on the grid)
                    module.weight.mul_(mask.to(module.weight.dtype))
    for tensor in trained:
        tensor.requires_grad_(False)
