"""Fields that validate as the server needs and document what they really hold.

Some response fields are filled from stored JSON that typed models already produced (a job's
summary, its model source, its recipe with defaults). Validating them again on every status
read costs time and turns an old row into a 500; the OpenAPI document should still give clients
the precise type. `DocumentedAs(T)` in `Annotated[...]` does that: the field validates as
written, its JSON schema is T's (with T's own models registered as components), and
schemathesis's response checks (tests/contract/) hold the server to it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs


class DocumentedAs:
    def __init__(self, documented: Any) -> None:
        self.documented = documented

    def __get_pydantic_json_schema__(
        self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(TypeAdapter(self.documented).core_schema)


_CHOICE = re.compile(r"'((?:[^'\\]|\\.)*)'|(-?\d+(?:\.\d+)?)")


def expected_choices(expected: object) -> list[str | int | float]:
    """pydantic's `expected` for a literal or enum ("'cpu' or 'gpu'", "2, 3, 4 or 8") as the
    list of values a client may send: `choices` in a problem is always a list."""
    if isinstance(expected, list | tuple):
        return list(expected)
    choices: list[str | int | float] = []
    for quoted, number in _CHOICE.findall(str(expected)):
        if quoted or not number:
            choices.append(quoted)
        else:
            choices.append(float(number) if "." in number else int(number))
    return choices
