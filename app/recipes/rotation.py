"""Rotations before quantization (SpinQuant / QuaRot): the residual stream and each attention
head's values are multiplied by orthogonal Hadamard matrices whose inverses are fused into the
neighbouring weights, so the model computes the same function while every weight row's
outliers are spread over all its inputs, which a quantization grid then fits more tightly.

Pure pydantic (no torch): the API validates sizes with the same rule the worker applies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from app.recipes.common import MethodParams

# compressed-tensors builds a "random-hadamard" matrix of size n = k * 2^m from a stored
# Hadamard matrix of size k: these k (its `hadamards.safetensors`; a unit test reads the file
# and checks this list). "hadamard" (Sylvester's construction) needs n = 2^m.
STORED_HADAMARD_SIZES = frozenset({1, 2, *range(4, 257, 4)})

TransformType = Literal["hadamard", "random-hadamard"]


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def hadamard_exists(size: int, transform_type: TransformType) -> bool:
    if transform_type == "hadamard":
        return is_power_of_two(size)
    return any(size % k == 0 and is_power_of_two(size // k) for k in STORED_HADAMARD_SIZES)


class RotateParams(MethodParams):
    """Hadamard rotations fused into the weights (SpinQuant's R1 and R2), before a quantization
    stage. Same architecture, same function, nothing computed at run time: the artifact loads
    and serves as any model of its kind (transformers, vLLM).

    Example recipe: `[{"method": "rotate"}, {"method": "gptq", "params": {"bits": 3}}]`.

    R1 rotates the residual stream (the embeddings, every attention and MLP input and output,
    and the LM head; the RMSNorm scales are folded into the next weights first); R2 rotates each
    attention head's values (v_proj output, o_proj input). An LM head tied to the embeddings
    stays tied (R1 turns both into the same matrix). Needs a Llama-style decoder: RMSNorm, q/k/v/o
    and gate/up/down projections, no bias on v_proj, o_proj or down_proj.
    """

    rotations: list[Literal["R1", "R2"]] = Field(
        default=["R1", "R2"],
        min_length=1,
        description="Which fused rotations to apply",
        json_schema_extra={"uniqueItems": True},
    )
    transform_type: TransformType = Field(
        default="random-hadamard",
        description="'random-hadamard' (random signs; sizes k * 2^m for stored k, e.g. 576 = "
        "36 * 16) or 'hadamard' (Sylvester; powers of two only)",
    )
    block_size: int | None = Field(
        default=None,
        ge=2,
        le=65536,
        description="R1 as a block-diagonal rotation of this size (must divide the hidden "
        "size); null = one rotation of the whole hidden size. R2 always uses the head size.",
    )

    @field_validator("rotations")
    @classmethod
    def _distinct(cls, rotations: list[str]) -> list[str]:
        if len(set(rotations)) != len(rotations):
            raise ValueError("each rotation at most once")
        return rotations

    def size_errors(self, hidden_size: int, head_dim: int) -> dict[str, str]:
        """Parameter name -> why these rotations cannot be built for the model's sizes."""
        errors: dict[str, str] = {}
        if "R1" in self.rotations:
            size = self.block_size or hidden_size
            if hidden_size % size:
                errors["block_size"] = f"must divide the hidden size {hidden_size}"
            elif not hadamard_exists(size, self.transform_type):
                errors["block_size" if self.block_size else "transform_type"] = (
                    f"no {self.transform_type} matrix of size {size} (R1); "
                    + _hint(hidden_size, self.transform_type)
                )
        if "R2" in self.rotations and not hadamard_exists(head_dim, self.transform_type):
            errors["transform_type"] = (
                f"no {self.transform_type} matrix of the head size {head_dim} (R2)"
            )
        return errors


def _hint(hidden_size: int, transform_type: TransformType) -> str:
    blocks = [
        b
        for b in range(2, hidden_size + 1)
        if hidden_size % b == 0 and hadamard_exists(b, transform_type)
    ]
    other = "hadamard" if transform_type == "random-hadamard" else "random-hadamard"
    if blocks:
        return f"block sizes that fit: {blocks[-4:]}, or transform_type {other!r}"
    return f"try transform_type {other!r}"
