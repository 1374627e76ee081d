"""Walk a request's JSON with dotted field paths, for checks that apply to every field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def walk(
    value: Any, path: str = "", *, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Any]]:
    """Every value under `value` with its dotted path (`recipe.0.params.bits`); top-level keys
    in `skip` are left out."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            if not path and key in skip:
                continue
            yield from walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}.{index}")


def integral_floats_as_ints(value: Any) -> Any:
    """JSON has one number type: `4.0` is an integer to JSON Schema, and request models are
    strict (a `true` or a `"4"` is not a number), so whole floats become ints before they are
    validated. Floats with a fraction stay floats; strict float fields take ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    return value
