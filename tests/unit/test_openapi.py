from __future__ import annotations

import json
from pathlib import Path

from app.openapi import openapi_document
from app.recipes import METHODS
from app.reports.schema import report_json_schema

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == openapi_document(), "run `make openapi` and commit openapi/openapi.json"


def test_openapi_documents_problem_responses_and_methods() -> None:
    doc = openapi_document()
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert {"202", "401", "422"} <= set(submit["responses"])
    assert "application/problem+json" in submit["responses"]["422"]["content"]
    stage = doc["components"]["schemas"]["StageIn"]
    assert stage["properties"]["method"]["enum"] == sorted(METHODS)


def test_committed_report_schema_matches_the_report_models() -> None:
    committed = json.loads((ROOT / "openapi" / "report.schema.json").read_text())
    assert committed == report_json_schema(), "run `make openapi` and commit openapi/"
