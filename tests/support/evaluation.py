"""Re-measure a downloaded artifact the way a user would, to check the report's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def perplexity_of(model: torch.nn.Module, model_dir: Path, evaluation: dict[str, Any]) -> float:
    """Perplexity on the report's held-out built-in-corpus tokens with the report's window."""
    from transformers import AutoTokenizer

    from workers.evaluation.perplexity import perplexity
    from workers.models.datasets import builtin_text, split_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, pool = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return perplexity(
        model.eval(),
        pool[: evaluation["tokens"]],
        context_length=evaluation["context_length"],
        stride=evaluation["stride"],
    ).perplexity
