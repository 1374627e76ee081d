"""Typed views of Hugging Face models. torch types every module attribute as Tensor | Module,
so the parts only an architecture defines (its config, `generate`, `save_pretrained`) are read
through these, with a runtime check where the libraries need a real PreTrainedModel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from app.jobs.state import ErrorCode
from workers.errors import JobFailure

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def hf_config(model: torch.nn.Module) -> Any:
    """The model's config: its fields depend on the architecture, so it is read untyped."""
    return model.config


def pretrained(model: torch.nn.Module) -> PreTrainedModel:
    """The model as the PreTrainedModel that llm-compressor's `oneshot` requires."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            f"{type(model).__name__} is not a transformers model: this stage needs one",
        )
    return model


def linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The Linear layer `name` (the callers found it as one)."""
    module = model.get_submodule(name)
    if not isinstance(module, torch.nn.Linear):
        raise JobFailure(ErrorCode.UNSUPPORTED, f"{name} is {type(module).__name__}, not Linear")
    return module


def tied_output_name(model: torch.nn.Module) -> str | None:
    """The output embedding's module name when the config ties it to the input embedding. An
    offloaded model holds two handles on the one tied tensor, so identity cannot tell."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None else None
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    if output is None or not getattr(text, "tie_word_embeddings", False):
        return None
    return next(name for name, module in model.named_modules() if module is output)
