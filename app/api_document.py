"""The OpenAPI document as clients (and schemathesis, tests/contract/) read it.

FastAPI's generated document is patched in five ways it cannot express itself:
- every error answer is documented as what the handlers in app/errors.py really send:
  application/problem+json with one `Problem` schema (FastAPI would say application/json
  HTTPValidationError for 422);
- operations with a request body also document 400, FastAPI's answer to a body it cannot
  decode (not UTF-8);
- free-text strings declare that they hold no NUL (Postgres cannot store it);
- the tag of a discriminated union (`kind`) is required in each member, as validation needs;
- OpenAPI links say how a submitted job's id feeds the job's other operations, so clients'
  generators and stateful testers can follow POST → GET → cancel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from app.errors import PROBLEM_JSON


class ProblemFieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. recipe.0.params.bits")
    message: str
    type: str | None = None
    expected: str | None = Field(default=None, description="What the field accepts, in words")
    choices: list[str | int | float] | None = Field(
        default=None, description="The values the field accepts, where it is one of a list"
    )


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is stable, clients switch on it."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None
    errors: list[ProblemFieldError] | None = None


BAD_BODY = {
    "description": "`invalid_json`: the body is not JSON (malformed, not text, or sent without "
    "Content-Type: application/json)"
}
JOB_ID = "$response.body#/id"
SUBMIT = ("/v1/jobs", "post", "202")
# (path, method, status) of the answer carrying a job → links to the job's operations.
JOB_ANSWERS = (SUBMIT, ("/v1/jobs/{job_id}", "get", "200"))
JOB_OPERATIONS = {
    "GetJob": ("/v1/jobs/{job_id}", "get"),
    "ListJobEvents": ("/v1/jobs/{job_id}/events", "get"),
    "CancelJob": ("/v1/jobs/{job_id}/cancel", "post"),
    "ListJobArtifacts": ("/v1/jobs/{job_id}/artifacts", "get"),
    "GetJobReport": ("/v1/jobs/{job_id}/report", "get"),
}


def _problem_content(schemas: dict[str, Any]) -> dict[str, Any]:
    for model in (ProblemFieldError, Problem):
        schemas[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    return {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _every_object(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _every_object(value)
    elif isinstance(node, list):
        for value in node:
            yield from _every_object(value)


def _require_discriminators(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A union discriminated by `kind` needs the tag in the body (pydantic cannot pick a
    member without it), but each member gives it a default, so pydantic's schema leaves it
    optional: declare it required in every member the mapping names."""
    for node in _every_object(document):
        discriminator = node.get("discriminator") or {}
        for ref in discriminator.get("mapping", {}).values():
            member = schemas[ref.rsplit("/", 1)[-1]]
            if discriminator["propertyName"] not in member.setdefault("required", []):
                member["required"].append(discriminator["propertyName"])


# Postgres text and jsonb cannot hold NUL, so the server refuses it in every string (422
# naming the field); a free-text string says so in the document.
NO_NUL = r"^[^\u0000]*$"


def _declare_no_nul(document: dict[str, Any]) -> None:
    for node in _every_object(document):
        if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(node):
            node["pattern"] = NO_NUL


def patch_document(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _require_discriminators(document, schemas)
    _declare_no_nul(document)
    problem = _problem_content(schemas)
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            if "requestBody" in operation:
                responses.setdefault("400", dict(BAD_BODY))
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = problem
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    paths = document["paths"]
    for path, method, status in JOB_ANSWERS:
        answer = paths[path][method]["responses"][status]
        answer["links"] = {
            name: {
                "operationId": paths[target][verb]["operationId"],
                "parameters": {"job_id": JOB_ID},
            }
            for name, (target, verb) in JOB_OPERATIONS.items()
            if (target, verb) != (path, method)
        }
    return document


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = patch_document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
