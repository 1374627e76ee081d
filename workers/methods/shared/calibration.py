"""Running an llm-compressor recipe over the job's calibration samples."""

from __future__ import annotations

from typing import Any

from app.jobs.state import ErrorCode
from workers.errors import JobFailure
from workers.methods.base import StageInput
from workers.methods.shared.layer_progress import LayerProgress
from workers.models.hf import pretrained


def require_calibration(method: str, stage: StageInput) -> list[list[int]]:
    if not stage.calibration_ids:
        raise JobFailure(
            ErrorCode.DATA_ERROR,
            f"{method}: the calibration text yields no sample of calibration.max_seq_length tokens",
        )
    return stage.calibration_ids


def calibration_notes(samples: list[list[int]]) -> dict[str, int]:
    """What a calibrated stage read, for its notes."""
    return {"calibration_samples": len(samples), "calibration_tokens": sum(map(len, samples))}


def calibration_dataset(samples: list[list[int]]) -> Any:
    """Pre-tokenized samples as the `datasets.Dataset` oneshot expects (no tokenizer pass)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]}
    )


def oneshot_calibrated(
    stage: StageInput, method: str, recipe: Any, samples: list[list[int]]
) -> None:
    """llm-compressor's oneshot over the samples, reporting which decoder layer it is on."""
    from llmcompressor import oneshot

    with LayerProgress(stage, method).watching(stage.model):
        oneshot(
            model=pretrained(stage.model),
            dataset=calibration_dataset(samples),
            recipe=recipe,
            max_seq_length=max(len(s) for s in samples),
            num_calibration_samples=len(samples),
            # The job's sample order, not a draw from the global RNG (the library's default):
            # the statistics are sums over all samples, but their rounding depends on the
            # order, and a retried attempt (layer resume) must see the same one.
            shuffle_calibration_samples=False,
        )
