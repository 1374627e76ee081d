from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, WithJsonSchema

from app.deps import DbDep, TenantDep
from app.errors import ERRORS_401, ERRORS_404, ERRORS_422, PROBLEM_RESPONSE
from app.reports.compare import MAX_JOBS, CompareTable, compare, parse_ids

router = APIRouter(tags=["reports"])
_UUID = r"\s*[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\s*"
# One value: one job id or several, comma-separated (the schema says so, so clients and
# schemathesis know what is valid; parse_ids still counts the total across repeats).
_JOB_IDS = rf"^{_UUID}(,{_UUID}){{0,{MAX_JOBS - 1}}}$"


def _job_ids(value: str) -> str:
    """The pattern stays in the schema; the error says it in words (not the raw regex)."""
    if not re.fullmatch(_JOB_IDS, value):
        raise ValueError(
            f"{value[:80]!r} is not a list of job ids: give job ids (UUIDs), comma-separated "
            f"or repeated, at most {MAX_JOBS}"
        )
    return value


JobIds = Annotated[
    str, AfterValidator(_job_ids), WithJsonSchema({"type": "string", "pattern": _JOB_IDS})
]


@router.get(
    "/v1/compare",
    response_model=CompareTable,
    responses={
        **ERRORS_401,
        **ERRORS_404,
        **ERRORS_422,
        409: {"description": "A job has not succeeded", **PROBLEM_RESPONSE},
    },
)
async def compare_jobs(
    db: DbDep,
    tenant_id: TenantDep,
    jobs: Annotated[
        list[JobIds],
        Query(
            description="Job ids, comma-separated or repeated (at most 20), same base model",
            min_length=1,
            max_length=MAX_JOBS,
        ),
    ],
) -> CompareTable:
    ids = parse_ids(jobs)
    return await db.run(lambda session: compare(session, tenant_id, ids))
