"""The `distill` stage: teacher and student, training text, before/after figures, training."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.artifacts.manifest import checkpoint_prefix
from app.config import get_settings
from app.jobs.state import ErrorCode
from app.recipes import DerivedStudent, DistillParams
from app.storage import make_store
from workers.errors import JobFailure
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.distillation.checkpoint import CheckpointStore
from workers.methods.distillation.data import pack
from workers.methods.distillation.generated import teacher_sequences
from workers.methods.distillation.losses import HeldOut, heldout_figures
from workers.methods.distillation.models import (
    add_lora,
    build_student,
    check_hidden_sizes,
    load_teacher,
    merge_lora,
)
from workers.methods.distillation.schedule import budget_fraction
from workers.methods.distillation.trainer import StepReport, TrainingOutcome, TrainingRun, train
from workers.methods.shared.quantization_aware import fake_quantized_training
from workers.methods.shared.storage_dtype import compute_dtype
from workers.methods.shared.structured_pruning import check_architecture
from workers.models.datasets import load_corpus, split_tokens


class Distill(CompressionMethod[DistillParams]):
    name = "distill"
    params_type = DistillParams

    def preflight(self, model: torch.nn.Module, params: DistillParams) -> list[str]:
        if isinstance(params.student, DerivedStudent):
            check_architecture(model, params.student.structured)
        warnings = []
        if params.max_seconds is None and params.max_steps > 10_000:
            warnings.append("no max_seconds: training is bounded only by max_steps")
        return warnings

    def apply(self, stage: StageInput, params: DistillParams) -> StageResult:
        device = next(stage.model.parameters()).device
        teacher = load_teacher(stage, params, device, compute_dtype(device))
        incoming_dtype = next(stage.model.parameters()).dtype
        student, notes = build_student(stage, params, teacher, device)
        if params.hidden_loss_weight:
            check_hidden_sizes(student, teacher)
        sequences, corpus_note = training_sequences(stage, params)
        notes.update(corpus_note)
        if params.generated_sequences:
            written, written_note = teacher_written(stage, params, teacher)
            sequences = torch.cat([sequences, written])
            notes.update(written_note)

        eval_ids = stage.eval_ids[: params.eval_tokens] if params.eval_tokens else []
        figures: dict[str, float] = {}
        if len(eval_ids) >= 2:
            before = _heldout(student, teacher, eval_ids, stage)
            figures["teacher_perplexity"] = before.teacher_perplexity
            figures["student_perplexity_before"] = before.student_perplexity
            figures["kl_to_teacher_before"] = before.kl_to_teacher

        if params.lora is not None:
            student = add_lora(student, params.lora)
        checkpoints = checkpoint_store(stage, params, student)
        on_step = progress_reporter(stage, params, self.name)
        on_grid = (
            fake_quantized_training(student)
            if notes.get("quantization_aware")
            else contextlib.nullcontext()
        )
        with on_grid:
            outcome = train(
                TrainingRun(
                    student=student,
                    teacher=teacher,
                    params=params,
                    sequences=sequences,
                    seed=stage.seed,
                    masks=stage.masks,
                    checkpoints=checkpoints,
                    check=stage.ctx.check if stage.ctx else None,
                    on_step=on_step,
                    on_warning=stage.ctx.warn if stage.ctx else None,
                    eos_token_id=getattr(stage.tokenizer, "eos_token_id", None),
                )
            )
        report_resume(stage, outcome)
        student = merge_lora(student).eval()
        if len(eval_ids) >= 2:
            after = _heldout(student, teacher, eval_ids, stage)
            figures["student_perplexity_after"] = after.student_perplexity
            figures["kl_to_teacher_after"] = after.kl_to_teacher
            gap = figures["student_perplexity_before"] - figures["teacher_perplexity"]
            if gap > 0:
                recovered = (
                    figures["student_perplexity_before"] - figures["student_perplexity_after"]
                )
                figures["gap_recovered"] = recovered / gap
        del teacher
        notes.update(training_notes(params, outcome, len(eval_ids), figures))
        return StageResult(model=student.to(incoming_dtype), notes=notes)


def checkpoint_store(
    stage: StageInput, params: DistillParams, student: torch.nn.Module
) -> CheckpointStore | None:
    """Where the training checkpoints go (none outside a job: tests, benchmarks)."""
    if stage.ctx is None:
        return None
    return CheckpointStore(
        make_store(stage.ctx.settings),
        checkpoint_prefix(stage.ctx.job_id),
        (stage.scratch or Path(stage.ctx.settings.work_dir)) / "checkpoints",
        generation=stage.ctx.generation,
        fingerprint=fingerprint(stage, params, student),
    )


def progress_reporter(
    stage: StageInput, params: DistillParams, name: str
) -> Callable[[StepReport], None]:
    """Each step's share of the stage's progress span (by steps, or by time when capped)."""
    span_start, span_end = stage.progress_span

    def on_step(report: StepReport) -> None:
        if stage.ctx is None:
            return
        done = budget_fraction(params, report.step, report.train_seconds)
        percent = span_start + (span_end - span_start) * done
        stage.ctx.progress(f"stage:{name}", percent, detail=report.as_json())

    return on_step


def report_resume(stage: StageInput, outcome: TrainingOutcome) -> None:
    if stage.ctx is None:
        return
    if outcome.resumed_from_step is not None:
        stage.ctx.event(
            "info",
            f"distillation resumed from the checkpoint at step {outcome.resumed_from_step}",
            {"resumed_from_step": outcome.resumed_from_step},
        )
    if outcome.resume_note:
        stage.ctx.warn(outcome.resume_note)


def training_notes(
    params: DistillParams, outcome: TrainingOutcome, eval_tokens: int, figures: dict[str, float]
) -> dict[str, Any]:
    state = outcome.state
    losses = state.losses
    return {
        "loss": params.loss,
        "steps": state.step,
        "stopped_by": outcome.stopped_by,
        "resumed_from_step": outcome.resumed_from_step,
        "trained_tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 3),
        "tokens_per_second": round(state.tokens / state.train_seconds, 2)
        if state.train_seconds
        else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_curve": _thin(losses),
        "checkpoint_bytes_written": outcome.checkpoint_bytes,
        "evaluation_tokens": eval_tokens,
        **{key: round(value, 6) for key, value in figures.items()},
    }


def training_sequences(
    stage: StageInput, params: DistillParams
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The calibration share of the training corpus (never the evaluation share), packed."""
    settings = stage.ctx.settings if stage.ctx else get_settings()
    corpus = load_corpus(params.dataset.model_dump(), settings)
    train_pool, _ = split_tokens(stage.tokenizer(corpus.text)["input_ids"])
    sequences = pack(train_pool, params.seq_length)
    if len(sequences) == 0:
        raise JobFailure(
            ErrorCode.DATA_ERROR,
            f"{corpus.name}: {len(train_pool)} training tokens, fewer than one sequence of "
            f"seq_length {params.seq_length}",
        )
    return sequences, {
        "dataset": corpus.name,
        "dataset_sha256": corpus.sha256,
        "train_sequences": len(sequences),
        "split": "the first 80% of the corpus's tokens (evaluation reads only the rest)",
    }


def teacher_written(
    stage: StageInput, params: DistillParams, teacher: torch.nn.Module
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sequences the teacher writes itself (`generated_sequences`), seeded by the job."""
    count = params.generated_sequences
    if stage.ctx is not None:
        stage.ctx.event(
            "info",
            f"the teacher is writing {count} training sequences of {params.seq_length} tokens",
        )
    config: Any = teacher.config
    vocab = min(len(stage.tokenizer), int(config.vocab_size))
    started = time.monotonic()
    written = teacher_sequences(
        teacher,
        count=count,
        seq_length=params.seq_length,
        seed=stage.seed,
        vocab_size=vocab,
        special_ids=list(getattr(stage.tokenizer, "all_special_ids", [])),
        check=stage.ctx.check if stage.ctx else None,
    )
    seconds = time.monotonic() - started
    return written, {
        "generated_sequences": count,
        "generation_seconds": round(seconds, 3),
        "generation_tokens_per_second": round(written.numel() / seconds, 2) if seconds else None,
    }


def fingerprint(stage: StageInput, params: DistillParams, student: torch.nn.Module) -> str:
    """A checkpoint is only restored into the same training setup: same stage, parameters,
    seed and trainable tensor shapes."""
    shapes = {n: list(p.shape) for n, p in student.named_parameters() if p.requires_grad}
    blob = json.dumps(
        [stage.index, stage.seed, params.model_dump(mode="json"), shapes], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _heldout(
    student: torch.nn.Module, teacher: torch.nn.Module, ids: list[int], stage: StageInput
) -> HeldOut:
    was_training = student.training
    student.eval()
    check = stage.ctx.check if stage.ctx else None
    result = heldout_figures(student, teacher, ids, stage.eval_context_length, check)
    student.train(was_training)
    return result


def _thin(values: list[float], points: int = 50) -> list[float]:
    """At most `points` values of a loss curve, evenly spaced, for the report."""
    if len(values) <= points:
        return values
    step = len(values) / points
    return [values[int(i * step)] for i in range(points)] + [values[-1]]
