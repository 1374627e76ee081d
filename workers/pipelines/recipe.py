"""Run a recipe's stages on a loaded model and save the artifact: the part of a job that the
tests and benchmarks share with the worker, without queue, database or object store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.recipes import METHODS, MethodParams
from workers.context import JobContext
from workers.pipelines.base import StageInput
from workers.pipelines.registry import get_method
from workers.pipelines.storage_dtype import cast_for_storage

STORAGE_DTYPE = torch.bfloat16


def compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bfloat16 matmuls are several times slower there), bfloat16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_stages(stages: list[dict[str, Any]]) -> list[tuple[str, MethodParams]]:
    return [(s["method"], METHODS[s["method"]].params.model_validate(s["params"])) for s in stages]


def needs_calibration(stages: list[tuple[str, MethodParams]]) -> bool:
    return any(get_method(name).needs_calibration(params) for name, params in stages)


def preflight(model: torch.nn.Module, stages: list[tuple[str, MethodParams]]) -> list[str]:
    """Every stage's checks against the real model, before any heavy work. Returns warnings."""
    warnings: list[str] = []
    for name, params in stages:
        warnings.extend(get_method(name).preflight(model, params))
    return warnings


@dataclass
class RecipeOutcome:
    model: torch.nn.Module
    save_format: str = "dense"
    stage_notes: list[dict[str, Any]] = field(default_factory=list)


def run_stages(
    model: torch.nn.Module,
    tokenizer: Any,
    stages: list[tuple[str, MethodParams]],
    calibration_ids: list[list[int]],
    ctx: JobContext | None = None,
    on_stage: Callable[[int, str], None] | None = None,
    on_stage_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> RecipeOutcome:
    outcome = RecipeOutcome(model)
    for index, (name, params) in enumerate(stages):
        if on_stage:
            on_stage(index, name)
        result = get_method(name).apply(
            StageInput(outcome.model, tokenizer, calibration_ids, ctx),
            params,
        )
        outcome.model = result.model
        if result.save_format != "dense":
            outcome.save_format = result.save_format
        outcome.stage_notes.append({"method": name, **result.notes})
        if on_stage_done:
            on_stage_done(index, outcome.stage_notes[-1])
    return outcome


def save_artifact(outcome: RecipeOutcome, tokenizer: Any, out_dir: Path) -> None:
    """Cast to the 16-bit storage dtype (quantized weights kept on their grid) and save."""
    cast_for_storage(outcome.model, STORAGE_DTYPE)
    outcome.model.save_pretrained(  # type: ignore[operator]
        str(out_dir), save_compressed=outcome.save_format == "compressed-tensors"
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
