from __future__ import annotations

import json
from pathlib import Path

import jsonschema

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
    schemas = doc["components"]["schemas"]
    # A stage is one schema per method, discriminated by `method`, each with its own params.
    stage = schemas["StageIn"]
    mapping = stage["discriminator"]["mapping"]
    assert stage["discriminator"]["propertyName"] == "method" and set(mapping) == set(METHODS)
    for method, ref in mapping.items():
        member = schemas[ref.rsplit("/", 1)[-1]]
        assert member["properties"]["method"]["const"] == method
        params = member["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
        assert params == METHODS[method].params.__name__
        assert member["additionalProperties"] is False
    # Params whose defaults are not a valid setting must be given.
    assert "params" in schemas["LowRankStage"]["required"]
    assert "params" not in schemas["RtnStage"].get("required", [])
    # The union tag is required wherever pydantic needs it to pick a member.
    assert "kind" in schemas["S3Dataset"]["required"]
    # Bearer auth is declared, and every job operation requires it.
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for operation in doc["paths"]["/v1/jobs/{job_id}"].values():
        assert operation["security"] == [{"bearerAuth": []}]
    # Typed answers: the job's model, recipe and summary, the report, and `choices` a list.
    job = schemas["JobRead"]["properties"]
    assert job["recipe"]["items"]["$ref"].endswith("/StageIn")
    assert {"$ref": "#/components/schemas/CompressSummary"} in job["metrics"]["anyOf"]
    report = doc["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]
    assert report["content"]["application/json"]["schema"]["$ref"].endswith("/Report")
    choices = schemas["ProblemFieldError"]["properties"]["choices"]["anyOf"][0]
    assert choices["type"] == "array"
    # What the server enforces and JSON Schema can state is declared.
    assert schemas["RtnParams"]["properties"]["group_size"]["anyOf"][0]["enum"][:3] == [8, 16, 32]
    job_create = {**schemas["JobCreate"], "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(job_create)  # its $refs resolve in it
    model = {"kind": "builtin", "name": "smollm2-135m-instruct"}
    rtn = [{"method": "rtn", "params": {}}]
    search = {"budget": {"max_bits_per_weight": 4.25}}
    valid = [
        {"model": model, "recipe": rtn},
        {"kind": "evaluate", "model": model},
        {"kind": "search", "model": model, "search": search},
    ]
    invalid = [
        {"model": model},  # a compress job needs a recipe
        {"kind": "search", "model": model},  # a search needs its budget
        {"kind": "search", "model": model, "search": None},
        {"kind": "search", "model": model, "search": search, "recipe": rtn},
        {"model": model, "recipe": rtn, "search": search},
        {"kind": "search", "model": model, "search": {"budget": {}}},
        {"kind": "search", "model": model, "search": {**search, "families": ["rotation"]}},
    ]
    assert all(validator.is_valid(body) for body in valid)
    assert not any(validator.is_valid(body) for body in invalid)


def test_committed_report_schema_matches_the_report_models() -> None:
    committed = json.loads((ROOT / "openapi" / "report.schema.json").read_text())
    assert committed == report_json_schema(), "run `make openapi` and commit openapi/"
