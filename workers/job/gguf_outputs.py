"""GGUF files beside the recipe's artifact (the job's `output.gguf`).

Each file is written by the same `gguf` stage a recipe can end with (auto-round's exporter,
`workers/methods/quantization/gguf.py`), from the model the recipe's quantization stage starts
from: llama.cpp's types round the 16-bit weights, not the artifact's integers (rounding twice
would add both errors). That model is the input model when quantization comes first (its
directory is already on disk); otherwise a dense copy saved to scratch just before the
quantization stage (after the last stage when the recipe has none). The files are written after
the main artifact is checked and measured, with every other model released: one model in
memory at a time. Each is opened as users will (transformers, `gguf_file=`) and its perplexity
measured on the job's evaluation text.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch

from app.recipes import METHODS, GgufParams
from workers.evaluation.suite import perplexity_metrics
from workers.formats import gguf
from workers.job import progress
from workers.job.environment import load_model
from workers.job.run import JobRun
from workers.methods.recipe import restore_structural_config, run_stages, save_artifact
from workers.methods.shared.storage_dtype import compute_dtype
from workers.models.hf import pretrained

SNAPSHOT = "gguf-source"
OUTPUTS = "gguf-outputs"
ARTIFACT_FOLDER = "gguf"  # in the job's artifacts: gguf/model-<TYPE>.gguf


def snapshot_after(stages: list[tuple[str, Any]]) -> int | None:
    """The index of the stage after which the dense copy is saved; None when the input model
    itself is what the files convert (quantization comes first)."""
    first = next(
        (i for i, (name, _) in enumerate(stages) if METHODS[name].kind == "quantization"),
        len(stages),
    )
    return first - 1 if first > 0 else None


def save_snapshot(model: torch.nn.Module, tokenizer: Any, folder: Path) -> Path:
    """The model as it is now, as a plain checkpoint in its compute dtype."""
    pretrained(model).save_pretrained(str(folder))
    restore_structural_config(model, folder)  # a structured stage's sizes, not the source's
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def write_all(
    run: JobRun, source_dir: Path, original_perplexity: float | None
) -> tuple[list[dict[str, Any]], list[tuple[str, Path]]]:
    """Every requested GGUF file: the report's rows and the files to upload (artifact path,
    local path)."""
    ctx, requested = run.ctx, run.job.spec.output.gguf
    rows: list[dict[str, Any]] = []
    files: list[tuple[str, Path]] = []
    for index, params in enumerate(requested):
        ctx.progress(
            f"gguf:{params.type}",
            progress.GGUF_OUTPUTS.at(index / len(requested)),
            {"file": index + 1, "files": len(requested)},
        )
        started = time.perf_counter()
        with ctx.timed(f"gguf_{params.type}"):
            out_dir = convert(run, source_dir, params)
            file = gguf.artifact_file(out_dir)
            row: dict[str, Any] = {
                "type": params.type,
                "imatrix": params.searches_scales,
                "path": f"{ARTIFACT_FOLDER}/{file.name}",
                "bytes": file.stat().st_size,
                **storage_figures(file),
            }
            measured = measure(run, out_dir)
        if measured is not None:
            row["perplexity"] = measured
            if original_perplexity:
                change = 100 * (measured / original_perplexity - 1)
                row["perplexity_change_pct"] = round(change, 2)
        row["seconds"] = round(time.perf_counter() - started, 3)
        rows.append(row)
        files.append((row["path"], file))
    return rows, files


def convert(run: JobRun, source_dir: Path, params: GgufParams) -> Path:
    """One GGUF file through the `gguf` stage, from a fresh load of the dense model."""
    device = run.source.device
    model = load_model(source_dir, device).to(compute_dtype(device))
    outcome = run_stages(
        model,
        run.source.tokenizer,
        [("gguf", params)],
        run.data.calibration_ids,
        run.ctx,
        scratch=run.scratch / OUTPUTS / f"work-{params.type}",
        seed=run.job.spec.seed,
    )
    out_dir = run.scratch / OUTPUTS / params.type
    save_artifact(outcome, run.source.tokenizer, out_dir)
    del model, outcome
    gc.collect()
    return out_dir


def storage_figures(file: Path) -> dict[str, Any]:
    found = gguf.storage(file)
    return {key: found[key] for key in ("bits_per_weight", "all_bits_per_weight", "tensor_types")}


def measure(run: JobRun, out_dir: Path) -> float | None:
    """The file's perplexity as transformers reads it (dequantized), the job's settings; None
    when the job measures no perplexity, or when it failed (named in `evaluations`)."""
    if not run.plan.perplexity:
        return None
    label = f"gguf.{out_dir.name}.perplexity"

    def perplexity() -> float:
        loaded = gguf.load(out_dir, compute_dtype(run.source.device)).to(run.source.device)
        try:
            return float(perplexity_metrics(loaded.eval(), run.plan)["perplexity"])
        finally:
            del loaded
            gc.collect()

    return run.evaluations.run(label, perplexity)
