from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import SessionDep, TenantDep
from app.errors import ERRORS_401, ERRORS_404, ERRORS_422, PROBLEM_RESPONSE
from app.reports.compare import CompareTable, compare, parse_ids

router = APIRouter(tags=["reports"])


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
def compare_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    jobs: Annotated[
        list[str],
        Query(description="Job ids, comma-separated or repeated (at most 20), same base model"),
    ],
) -> CompareTable:
    return compare(session, tenant_id, parse_ids(jobs))
