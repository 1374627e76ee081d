"""The job's input model: fetched from its source, loaded on the job's device with its
tokenizer, and dropped as soon as nothing needs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.sources import ModelSource
from workers.context import JobContext
from workers.errors import JobFailure
from workers.formats.loader import trust_remote_code
from workers.job.environment import load_model
from workers.models.sources import ResolvedModel, resolve_model


@dataclass
class Source:
    """The input model as loaded, and what evaluating it needs."""

    resolved: ResolvedModel
    tokenizer: Any
    model: torch.nn.Module
    device: torch.device

    def release(self) -> None:
        """Drop the in-memory model (the job's largest object) once nothing needs it."""
        del self.model


def fetch_source(ctx: JobContext, model: ModelSource, scratch: Path) -> ResolvedModel:
    """The model's files in a local directory (downloaded, or converted from GGUF)."""
    return resolve_model(model.model_dump(mode="json"), ctx.settings, scratch)


def open_source(resolved: ResolvedModel, device: torch.device) -> Source:
    """Load the fetched model (and its tokenizer) on the job's device."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(resolved.path), trust_remote_code=trust_remote_code()
    )
    try:
        loaded = load_model(resolved.path, device)
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not load: {exc}") from exc
    return Source(resolved, tokenizer, loaded, device)
