"""Layer sizes of the built-in models, so a recipe that cannot fit them is refused at submission
(422) instead of in the worker. Other sources are checked by the worker's preflight, seconds
after the model loads, with the same messages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.planning.model_facts import ModelFacts, facts_from_config


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @property
    def linear_input_sizes(self) -> list[int]:
        """Input sizes of the decoder's Linear layers (q/k/v/gate/up, o_proj, down_proj)."""
        return sorted(
            {self.hidden_size, self.num_attention_heads * self.head_dim, self.intermediate_size}
        )

    @classmethod
    def of(cls, facts: ModelFacts) -> ModelShape:
        return cls(
            hidden_size=facts.hidden_size,
            intermediate_size=facts.intermediate_size,
            num_hidden_layers=facts.num_hidden_layers,
            num_attention_heads=facts.num_attention_heads,
            num_key_value_heads=facts.num_key_value_heads,
            head_dim=facts.head_dim,
        )


# The built-in models' config.json (the sizes that matter here). Stored in float32 on the
# worker: the GGUF file is dequantized once (workers/models/sources.py).
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
}


def builtin_facts(name: str) -> ModelFacts:
    return facts_from_config(BUILTIN_CONFIGS[name])


BUILTIN_SHAPES = {name: ModelShape.of(builtin_facts(name)) for name in BUILTIN_CONFIGS}


def group_size_errors(group: object, shape: ModelShape, where: str) -> list[dict[str, Any]]:
    """A quantization stage's group size must divide every decoder Linear's input size."""
    if not isinstance(group, int) or isinstance(group, bool):
        return []
    sizes = shape.linear_input_sizes
    if not any(size % group for size in sizes):
        return []
    message = f"{group} does not divide this model's layer input sizes {sizes}"
    return [
        {"field": f"{where}.group_size", "message": f"{message}: {dividing_group(sizes, group)}"}
    ]


def fitting_group(sizes: list[int], wanted: int) -> int | None:
    """The largest power of two up to `wanted` that divides every layer input size; None (one
    scale per output channel) when none of at least 8 does."""
    common = math.gcd(*sizes)
    group = wanted
    while group >= 8 and common % group:
        group //= 2
    return group if group >= 8 else None


def dividing_group(sizes: list[int], wanted: int) -> str:
    """The advice for a group size that does not fit."""
    group = fitting_group(sizes, wanted)
    return f"use {group}" if group else "use null (one scale per output channel)"
