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
