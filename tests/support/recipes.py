"""Checks shared by the recipe-validation tests."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.recipes import ModelShape, StageIn, validate_recipe


def assert_refused(
    cases: list[tuple[list[StageIn], str, str]], shape: ModelShape | None = None
) -> None:
    """Each (recipe, field, message): validation fails with an error on that field whose
    message contains that text."""
    for recipe, field, message in cases:
        with pytest.raises(InvalidInput) as caught:
            validate_recipe(recipe, shape=shape)
        found = {e["field"]: e["message"] for e in caught.value.errors}
        assert field in found and message in found[field], found
