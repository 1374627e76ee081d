"""The job's input model: fetched from its source, opened on the job's device with its
tokenizer (loaded whole, or disk-offloaded as the memory plan says), and dropped as soon as
nothing needs it."""

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
from workers.job.environment import load_model, open_model_offloaded
from workers.models.offloaded import NotOffloadable
from workers.models.sources import ResolvedModel, resolve_model


@dataclass
class Source:
    """The input model as loaded, and what evaluating it needs."""

    resolved: ResolvedModel
    tokenizer: Any
    model: torch.nn.Module
    device: torch.device
    offloaded: bool = False  # the memory plan's `disk_offloaded` mode: no weight in memory

    def release(self) -> None:
        """Drop the in-memory model (the job's largest object) once nothing needs it."""
        del self.model


def fetch_source(ctx: JobContext, model: ModelSource, scratch: Path) -> ResolvedModel:
    """The model's files in a local directory (downloaded, or converted from GGUF)."""
    return resolve_model(model.model_dump(mode="json"), ctx.settings, scratch)


def open_source(
    resolved: ResolvedModel, device: torch.device, *, offloaded: bool, scratch: Path
) -> Source:
    """Load the fetched model (and its tokenizer) on the job's device, or open it
    disk-offloaded (each module's weights read from the checkpoint when it runs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(resolved.path), trust_remote_code=trust_remote_code()
    )
    if offloaded:
        try:
            model = open_model_offloaded(resolved.path, scratch / "offload", device)
        except NotOffloadable as exc:
            raise JobFailure(
                ErrorCode.UNSUPPORTED, f"the model cannot run disk-offloaded: {exc}"
            ) from exc
        except Exception as exc:
            raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not open: {exc}") from exc
        return Source(resolved, tokenizer, model, device, offloaded=True)
    try:
        loaded = load_model(resolved.path, device)
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"model does not load: {exc}") from exc
    return Source(resolved, tokenizer, loaded, device)
