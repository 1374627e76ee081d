"""What every method's parameters share: strict frozen models and layer selection."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from app.recipes.cost import StageCost


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def cost(self) -> StageCost:
        """The stage's work beyond holding the model (default: none, e.g. RTN, magnitude)."""
        return StageCost()


def check_patterns(patterns: list[str]) -> list[str]:
    """`re:` patterns must compile here, not fail inside a worker after the model loaded."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return patterns


def check_power_of_two(group_size: int) -> int:
    if group_size & (group_size - 1):
        raise ValueError("group_size must be a power of two (e.g. 32, 64, 128)")
    return group_size


# Weights per scale: a power of two from 8 to 4096. The document lists the values (JSON Schema
# has no "power of two"), so a client never builds a group size the server refuses.
GroupSize = Annotated[
    int,
    Field(ge=8, le=4096),
    AfterValidator(check_power_of_two),
    WithJsonSchema({"type": "integer", "enum": [2**k for k in range(3, 13)]}),
]


class LayerTargets(MethodParams):
    """Which Linear layers a stage touches: module types or `re:` name patterns, minus `ignore`."""

    targets: list[str] = Field(
        default=["Linear"], min_length=1, description="Module types or `re:` name patterns"
    )
    ignore: list[str] = Field(
        default=["lm_head"], description="Layer names or `re:` patterns left untouched"
    )

    @field_validator("targets", "ignore")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return check_patterns(patterns)
