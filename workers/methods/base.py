"""The interface every compression method implements: one file per method, listed once in
`workers/methods/catalog.py`. Generic in its parameter model, so each method's hooks take its
own typed params (no override narrowing)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from app.recipes import MethodParams
from workers.context import JobContext

P = TypeVar("P", bound=MethodParams)


@dataclass
class StageInput:
    model: torch.nn.Module
    tokenizer: Any
    calibration_ids: list[list[int]]
    ctx: JobContext | None = None  # None outside a job (tests, benchmarks)
    # What a training stage needs beyond the model: the job's input model (a teacher),
    # held-out text for its before/after figures, the zeros earlier stages made (kept while
    # training), its share of the job's progress bar, a scratch directory and the seed.
    source_path: Path | None = None
    eval_ids: list[int] = field(default_factory=list)
    eval_context_length: int = 512
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    index: int = 0
    progress_span: tuple[float, float] = (0.0, 100.0)
    scratch: Path | None = None
    seed: int = 0
    # Puts a model through the basis changes (rotations) of the recipe's earlier stages, so a
    # distill stage's teacher (the job's model) and its student compare hidden states in one
    # basis. Built by the recipe runner, which knows the stages (methods do not import the
    # catalog); None when no earlier stage rotates.
    align_teacher: Callable[[torch.nn.Module], torch.nn.Module] | None = None


@dataclass
class StageResult:
    model: torch.nn.Module
    # How the artifact must be saved: "compressed-tensors" asks save_pretrained to compress.
    save_format: str = "dense"
    notes: dict[str, Any] = field(default_factory=dict)
    # Sparsity stages: the layers whose zeros later stages must keep, and whether the artifact
    # stores them sparse (workers/formats/sparse_bitmask.py).
    masked_layers: list[str] = field(default_factory=list)
    sparse_storage: bool = False
    # "low-rank": factored layers, saved by workers/formats/low_rank.py; "gguf": the stage
    # wrote the whole artifact itself, as `written` (workers/formats/gguf.py places it).
    layout: str | None = None
    written: Path | None = None


class CompressionMethod(ABC, Generic[P]):
    name: ClassVar[str]
    params_type: type[P]

    def needs_calibration(self, params: P) -> bool:
        """Whether this stage reads the job's calibration samples (the params' cost says:
        `app/recipes/cost.py`, shared with the estimate and the memory plan)."""
        return params.cost().calibrated

    def preflight(self, model: torch.nn.Module, params: P) -> list[str]:
        """Reject impossible settings before heavy work (raise JobFailure); return warnings."""
        return []

    @abstractmethod
    def apply(self, stage: StageInput, params: P) -> StageResult: ...
