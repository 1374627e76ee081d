"""The recipe stage as the OpenAPI document types it: one model per method, a union
discriminated by `method`, so generated clients and schemathesis know each method's parameters.

The server itself validates a stage in two steps (`StageIn`, then the method's params model in
`validate_recipe`) so that an error names `recipe[i].params.<field>` and every stage's errors are
collected at once; these models are built from the same catalog, so the two cannot drift.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from app.recipes.catalog import METHODS


def _stage_model(name: str) -> type[BaseModel]:
    spec = METHODS[name]
    params: Any = spec.params
    tag: Any = Literal[name]
    try:  # `params` may be left out only where the method's defaults are a valid setting
        params()
        required = False
    except ValidationError:
        required = True
    model: type[BaseModel] = create_model(
        spec.params.__name__.removesuffix("Params") + "Stage",
        __config__=ConfigDict(extra="forbid", title=f"{name} stage"),
        __doc__=f"{spec.summary} ({spec.family})",
        method=(tag, ...),
        params=(params, ...) if required else (params, Field(default_factory=params)),
    )
    return model


@cache
def typed_stage() -> TypeAdapter[Any]:
    members = tuple(_stage_model(name) for name in sorted(METHODS))
    union: Any = Annotated[Union[members], Field(discriminator="method")]  # noqa: UP007
    return TypeAdapter(union)
