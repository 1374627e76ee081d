"""Run a recipe's stages on a loaded model and save the artifact: the part of a job that the
tests and benchmarks share with the worker, without queue, database or object store."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.recipes import METHODS, MethodParams
from workers.context import JobContext
from workers.formats import gguf, low_rank, sparse_bitmask
from workers.methods.base import StageInput
from workers.methods.catalog import get_method
from workers.methods.shared.masks import capture_masks, reapply_masks
from workers.methods.shared.storage_dtype import cast_for_storage
from workers.models.hf import hf_config, pretrained
from workers.models.streaming_save import save_offloaded

STORAGE_DTYPE = torch.bfloat16
COMPRESSED = "compressed-tensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the job spec's default (output.max_shard_bytes)
# Config fields a structured stage changes. llm-compressor's save wrapper rewrites config.json
# from the *source* model's file (for vLLM compatibility), which would undo them.
STRUCTURAL_CONFIG_KEYS = (
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "layer_types",
)


def parse_stages(stages: list[dict[str, Any]]) -> list[tuple[str, MethodParams]]:
    return [(s["method"], METHODS[s["method"]].params.model_validate(s["params"])) for s in stages]


def needs_calibration(stages: list[tuple[str, MethodParams]]) -> bool:
    return any(get_method(name).needs_calibration(params) for name, params in stages)


def preflight(model: torch.nn.Module, stages: list[tuple[str, MethodParams]]) -> list[str]:
    """Every stage's checks against the real model, before any heavy work. Returns warnings."""
    warnings: list[str] = []
    for name, params in stages:
        warnings.extend(get_method(name).preflight(model, params))
    sparse = [n for n, p in stages if METHODS[n].kind == "sparsity"]
    asymmetric = [n for n, p in stages if getattr(p, "symmetric", True) is False]
    if sparse and asymmetric:
        warnings.append(
            f"{asymmetric[0]} is asymmetric: a pruned weight becomes the zero point, not the "
            "integer 0, so the sparsity does not shrink the artifact (use symmetric)"
        )
    return warnings


@dataclass
class RecipeOutcome:
    model: torch.nn.Module
    save_format: str = "dense"
    stage_notes: list[dict[str, Any]] = field(default_factory=list)
    sparse_layers: list[str] = field(default_factory=list)
    layout: str | None = None
    written: Path | None = None

    @property
    def artifact_format(self) -> str:
        """What loads the artifact: plain transformers, or squash.load_pretrained."""
        if self.layout == "low-rank":
            return low_rank.FORMAT
        if self.layout == gguf.FORMAT:
            return gguf.FORMAT
        return sparse_bitmask.FORMAT if self.sparse_layers else "transformers"


def run_stages(
    model: torch.nn.Module,
    tokenizer: Any,
    stages: list[tuple[str, MethodParams]],
    calibration_ids: list[list[int]],
    ctx: JobContext | None = None,
    on_stage: Callable[[int, str], None] | None = None,
    on_stage_done: Callable[[int, dict[str, Any], torch.nn.Module], None] | None = None,
    *,
    source_path: Path | None = None,
    eval_ids: list[int] | None = None,
    eval_context_length: int = 512,
    scratch: Path | None = None,
    seed: int = 0,
    progress_span: tuple[float, float] = (0.0, 100.0),
) -> RecipeOutcome:
    """Apply the stages in order. `source_path` (the unmodified input model) and `eval_ids`
    are what a distill stage reads as its teacher and held-out text."""
    outcome = RecipeOutcome(model)
    masks: dict[str, torch.Tensor] = {}
    low, high = progress_span
    share = (high - low) / max(len(stages), 1)
    for index, (name, params) in enumerate(stages):
        if on_stage:
            on_stage(index, name)
        stage_input = StageInput(
            outcome.model,
            tokenizer,
            calibration_ids,
            ctx,
            source_path=source_path,
            eval_ids=list(eval_ids or []),
            eval_context_length=eval_context_length,
            masks=masks,
            index=index,
            progress_span=(low + share * index, low + share * (index + 1)),
            scratch=scratch,
            seed=seed,
            align_teacher=teacher_alignment(stages[:index], tokenizer, scratch),
        )
        result = get_method(name).apply(stage_input, params)
        outcome.model = result.model
        notes: dict[str, Any] = {"method": name, **result.notes}
        if masks:
            notes["mask_refilled_weights"] = reapply_masks(outcome.model, masks)
        if result.masked_layers:
            if index < len(stages) - 1:  # a later stage might refill pruned weights
                masks = capture_masks(outcome.model, result.masked_layers)
            if result.sparse_storage:
                outcome.sparse_layers = list(result.masked_layers)
        if result.save_format != "dense":
            outcome.save_format = result.save_format
        outcome.layout = result.layout or outcome.layout
        outcome.written = result.written or outcome.written
        outcome.stage_notes.append(notes)
        if on_stage_done:
            on_stage_done(index, notes, outcome.model)
    return outcome


def teacher_alignment(
    earlier: list[tuple[str, MethodParams]], tokenizer: Any, scratch: Path | None
) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
    """The earlier stages' rotations, as one function from a model to the model rotated the
    same way (the same stage with the same parameters: compressed-tensors draws a random
    Hadamard's signs from a fixed-seed generator; test_rotations.py compares the two)."""
    rotations = [(n, p) for n, p in earlier if METHODS[n].kind == "rotation"]
    if not rotations:
        return None

    def align(model: torch.nn.Module) -> torch.nn.Module:
        for name, params in rotations:
            model = (
                get_method(name)
                .apply(StageInput(model, tokenizer, [], scratch=scratch), params)
                .model
            )
        return model

    return align


def save_artifact(
    outcome: RecipeOutcome,
    tokenizer: Any,
    out_dir: Path,
    *,
    max_shard_bytes: int | None = None,
    offloaded: bool = False,
) -> None:
    """Cast to the 16-bit storage dtype (quantized weights kept on their grid) and save, in
    shards of at most `max_shard_bytes` (transformers' own sharding and index; a tensor larger
    than that is a shard of its own). An offloaded model is compressed and written module by
    module (`workers/models/streaming_save.py`: the same files)."""
    shard_bytes = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    if offloaded:
        if outcome.artifact_format != "transformers" or outcome.save_format != COMPRESSED:
            raise ValueError(
                f"a disk-offloaded model saves only as a {COMPRESSED} checkpoint, not "
                f"{outcome.save_format} ({outcome.artifact_format})"
            )
        save_offloaded(outcome.model, out_dir, max_shard_bytes=shard_bytes, dtype=STORAGE_DTYPE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        return
    if outcome.layout == gguf.FORMAT and outcome.written:  # the file carries its tokenizer
        gguf.place(outcome.written, out_dir, str(outcome.stage_notes[-1]["type"]))
        return
    cast_for_storage(outcome.model, STORAGE_DTYPE)
    if outcome.layout == "low-rank":
        low_rank.save(outcome.model, out_dir)
    else:
        pretrained(outcome.model).save_pretrained(
            str(out_dir),
            save_compressed=outcome.save_format == COMPRESSED,
            max_shard_size=shard_bytes,
        )
        restore_structural_config(outcome.model, out_dir)
        if outcome.sparse_layers:
            sparse_bitmask.convert(out_dir, outcome.sparse_layers)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def restore_structural_config(model: torch.nn.Module, out_dir: Path) -> None:
    path = out_dir / "config.json"
    saved = json.loads(path.read_text())
    current = hf_config(model).to_dict()
    changed = {
        key: current[key]
        for key in STRUCTURAL_CONFIG_KEYS
        if key in current and saved.get(key) != current[key]
    }
    if changed:
        path.write_text(json.dumps({**saved, **changed}, indent=2, sort_keys=True) + "\n")
