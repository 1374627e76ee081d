"""Layer sizes of the built-in models, so a recipe that cannot fit them is refused at submission
(422) instead of in the worker. Other sources are checked by the worker's preflight, seconds
after the model loads, with the same messages."""

from __future__ import annotations

from dataclasses import dataclass


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


BUILTIN_SHAPES = {
    "smollm2-135m-instruct": ModelShape(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
    )
}
