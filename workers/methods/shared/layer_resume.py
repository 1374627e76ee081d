"""Resume for the layer-wise calibrated methods llm-compressor runs through its sequential
pipeline (GPTQ, SparseGPT, Wanda): a mixin for their modifiers, written here because the
library has no resume (its most-asked-for missing feature for long runs).

- After the pipeline compresses decoder layer i (its `sequential_epoch_end`), the layer's
  tensors (weights as the method left them; scales, zero points and group indices when it
  quantizes) go to the job's layer checkpoints (`layer_checkpoints.py`).
- On a retried attempt, layers 0..k-1 found there are restored instead of computed: their
  calibration statistics (Hessians, activation norms) are not accumulated and their solve is
  skipped; the pipeline still runs them forward, so layer k's inputs come from the restored
  layers exactly as in an uninterrupted run, and the artifact is the same tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, PrivateAttr

from app.artifacts.manifest import checkpoint_prefix
from app.storage import make_store
from workers.methods.base import StageInput
from workers.methods.shared.layer_checkpoints import (
    LayerCheckpoints,
    layer_tensors,
    load_layer_tensors,
    stage_fingerprint,
)
from workers.methods.shared.layers import decoder_layers

# Fault point (workers/faults.py): held after the checkpoint that takes a stage past half of
# its layers, so the fault suite can kill the worker mid-stage at a known place.
PAST_HALF = "layers_past_half"
LAYER_TENSORS = ("weight", "weight_scale", "weight_zero_point", "weight_g_idx")


class LayerResume(BaseModel):
    """Mix in before the modifier class: `class X(LayerResume, GPTQModifier)`."""

    _modules: dict[int, dict[str, torch.nn.Module]] = PrivateAttr(default_factory=dict)
    _layer_of: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)
    _restored: dict[int, Path] = PrivateAttr(default_factory=dict)
    _checkpoints: LayerCheckpoints | None = PrivateAttr(default=None)
    _on_saved: Callable[[int, int], None] | None = PrivateAttr(default=None)

    def attach(
        self,
        model: torch.nn.Module,
        checkpoints: LayerCheckpoints | None,
        restored: dict[int, Path],
        on_saved: Callable[[int, int], None] | None = None,
    ) -> None:
        """Map every Linear to its decoder layer; `restored` holds layers 0..k-1 (their
        checkpoint files, read when the pipeline reaches each)."""
        for index, layer in enumerate(decoder_layers(model)):
            linears: dict[str, torch.nn.Module] = {
                name: module
                for name, module in layer.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
            self._modules[index] = linears
            self._layer_of.update({module: index for module in linears.values()})
        self._checkpoints, self._restored, self._on_saved = checkpoints, restored, on_saved

    def calibrate_module(self, module: torch.nn.Module, args: Any, _output: Any) -> None:
        if self._layer_of.get(module) in self._restored:
            return  # restored: no statistics, no solve
        super().calibrate_module(module, args, _output)  # type: ignore[misc]

    def on_sequential_epoch_end(self, state: Any, event: Any, *args: Any, **kwargs: Any) -> None:
        # GPTQ names `modules` in its signature, the sparsity modifiers take it in **kwargs.
        super().on_sequential_epoch_end(state, event, *args, **kwargs)  # type: ignore[misc]
        modules: list[torch.nn.Module] = kwargs.get("modules", args[0] if args else [])
        for index in sorted({self._layer_of[m] for m in modules if m in self._layer_of}):
            if index in self._restored:
                self._load(index)
            elif self._checkpoints is not None:
                self._checkpoints.save(index, self._tensors(index))
                if self._on_saved is not None:
                    self._on_saved(index, len(self._modules))

    def _tensors(self, index: int) -> dict[str, torch.Tensor]:
        return layer_tensors(self._modules[index], LAYER_TENSORS)

    def _load(self, index: int) -> None:
        load_layer_tensors(self._modules[index], LayerCheckpoints.load(self._restored[index]))


def resume_from_checkpoints(
    stage: StageInput, method: str, modifier: LayerResume, params: BaseModel, samples: Any
) -> dict[str, Any]:
    """Attach the job's layer checkpoints (none outside a job) and restore what an earlier
    attempt finished; returns the stage notes about it."""
    resume = job_layer_checkpoints(stage, method, params, samples)
    if resume is None:
        modifier.attach(stage.model, None, {})
        return {}
    modifier.attach(stage.model, resume.checkpoints, resume.restored, resume.on_saved)
    return resume.notes


@dataclass
class LayerResumePoint:
    """A stage's layer checkpoints, the finished layers an earlier attempt left there (0..k-1,
    as local files), a callback for each saved layer (the fault point), and the stage notes."""

    checkpoints: LayerCheckpoints
    restored: dict[int, Path]
    on_saved: Callable[[int, int], None]
    notes: dict[str, Any]


def job_layer_checkpoints(
    stage: StageInput, method: str, params: BaseModel, samples: Any
) -> LayerResumePoint | None:
    """The job's layer checkpoints for this stage, with what an earlier attempt finished
    restored (said in the job's events); None outside a job (tests, benchmarks)."""
    ctx = stage.ctx
    if ctx is None:
        return None
    layers = len(decoder_layers(stage.model))
    checkpoints = LayerCheckpoints(
        make_store(ctx.settings),
        f"{checkpoint_prefix(ctx.job_id)}/layers/stage-{stage.index}",
        (stage.scratch or Path(ctx.settings.work_dir)) / f"layer-checkpoints-{stage.index}",
        generation=ctx.generation,
        fingerprint=stage_fingerprint(method, params.model_dump(mode="json"), samples),
        check=ctx.check,
        warn=ctx.warn,
    )
    restored, why = checkpoints.restore(layers)
    if why:
        ctx.warn(f"{method}: {why}")
    if restored:
        ctx.event(
            "info",
            f"{method}: resumed at layer {len(restored) + 1} of {layers} "
            f"({len(restored)} restored from layer checkpoints)",
            {"resumed_at_layer": len(restored) + 1, "layers": layers},
        )

    def on_saved(index: int, total: int) -> None:
        if index + 1 == total // 2 + 1:
            ctx.fault_point(PAST_HALF)

    notes = {"layer_checkpoints": True, "resumed_layers": len(restored)}
    return LayerResumePoint(checkpoints, restored, on_saved, notes)
