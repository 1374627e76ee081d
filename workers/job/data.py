"""The job's text: evaluation tokens (the corpus's held-out share), calibration samples (its
calibration share), the tokens for the per-layer error, and the task data files; with the
measured overlap of the two shares (disjoint by construction on one corpus; measured, not
assumed, across corpora)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.jobs.schemas import JobSpec, TaskSpec
from workers.context import JobContext
from workers.errors import JobFailure
from workers.job.spec import ReadSpec
from workers.methods.recipe import needs_calibration
from workers.models.datasets import Corpus, load_corpus, split_tokens

OVERLAP_WINDOW = 32


@dataclass
class JobData:
    eval_ids: list[int]
    eval_corpus: Corpus
    calibration_ids: list[list[int]]
    calibration_sha256: str | None
    layer_error_ids: list[int]
    task_files: dict[str, Path]
    overlap: dict[str, Any]


def prepare_data(ctx: JobContext, job: ReadSpec, tokenizer: Any, scratch: Path) -> JobData:
    spec: JobSpec = job.spec
    evaluation = spec.evaluation
    eval_corpus = load_corpus(evaluation.dataset.model_dump(mode="json"), ctx.settings)
    _, eval_pool = split_tokens(tokenizer(eval_corpus.text)["input_ids"])
    eval_ids = eval_pool[: evaluation.max_tokens]
    calibration_ids: list[list[int]] = []
    calibration_sha256 = None
    layer_error_ids: list[int] = []
    layer_tokens = evaluation.layer_error_tokens
    # A search scores every layer on calibration text before any recipe exists.
    calibrated = job.spec.kind == "search" or needs_calibration([*job.stages, *job.gguf_outputs])
    if not job.evaluate_only and (calibrated or layer_tokens):
        cal_spec = spec.calibration
        cal_corpus = load_corpus(cal_spec.dataset.model_dump(mode="json"), ctx.settings)
        cal_pool, _ = split_tokens(tokenizer(cal_corpus.text)["input_ids"])
        layer_error_ids = cal_pool[:layer_tokens]
        if calibrated:
            length = cal_spec.max_seq_length
            calibration_ids = [
                cal_pool[i : i + length] for i in range(0, len(cal_pool) - length + 1, length)
            ][: cal_spec.num_samples]
            calibration_sha256 = cal_corpus.sha256
    used = [t for sample in calibration_ids for t in sample] or layer_error_ids
    overlap = measure_overlap(used, eval_ids)
    if overlap["shared_windows"]:
        ctx.warn(
            f"{overlap['shared_windows']} of the evaluation's {overlap['window']}-token windows "
            "also occur in the calibration text: perplexity may be optimistic"
        )
    task_files = fetch_task_data(ctx, evaluation.tasks, scratch / "tasks")
    return JobData(
        eval_ids,
        eval_corpus,
        calibration_ids,
        calibration_sha256,
        layer_error_ids,
        task_files,
        overlap,
    )


def measure_overlap(calibration: list[int], evaluation: list[int]) -> dict[str, Any]:
    """How many evaluation windows of OVERLAP_WINDOW tokens also appear in the calibration
    tokens (a repeated passage, or two corpora sharing text)."""
    n = OVERLAP_WINDOW
    seen = {tuple(calibration[i : i + n]) for i in range(0, max(len(calibration) - n + 1, 0))}
    windows = [tuple(evaluation[i : i + n]) for i in range(0, max(len(evaluation) - n + 1, 0), n)]
    shared = sum(1 for w in windows if w in seen)
    return {
        "window": n,
        "evaluation_windows": len(windows),
        "shared_windows": shared,
        "calibration_tokens_checked": len(calibration),
    }


def fetch_task_data(ctx: JobContext, tasks: list[TaskSpec], target: Path) -> dict[str, Path]:
    """Download the JSONL of every task that names `data` (a failure fails that task only)."""
    files: dict[str, Path] = {}
    for task in tasks:
        if not task.data:
            continue
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{task.name}.jsonl"
        try:
            corpus = load_corpus({"kind": "s3", "uri": task.data}, ctx.settings)
        except JobFailure as exc:
            ctx.warn(f"task {task.name}: {exc.message}")
            continue
        path.write_text(corpus.text)
        files[task.name] = path
    return files
