"""Reading a report the way the HTML page and /v1/compare must: through its typed models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel

from app.reports.schema import Report

ROOT = Path(__file__).resolve().parents[2]


def validate_against_published_schema(report: dict[str, Any]) -> None:
    """The report as served validates against `openapi/report.schema.json`."""
    schema = json.loads((ROOT / "openapi" / "report.schema.json").read_text())
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)


def typed_value(report: Report, key: str) -> Any:
    """The value at `key` (a '/'-separated path in report.json) read through the typed report:
    every step must be a field a model declares, a key of a typed map or a list index (a
    renamed or untyped field fails here, not silently on the page)."""
    value: Any = report
    for part in key.split("/"):
        if isinstance(value, BaseModel):
            declared = type(value).model_fields
            assert part in declared, f"{key}: {part!r} is not a field of {type(value).__name__}"
            value = getattr(value, part)
        elif isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[part]
        else:
            raise AssertionError(f"{key}: nothing under {part!r}")
    assert isinstance(value, int | float), f"{key} is {value!r}, not a figure"
    return value
