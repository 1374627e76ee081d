from __future__ import annotations

import json
import uuid
from pathlib import PurePosixPath
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy.orm import Session

from app.artifacts import service
from app.artifacts.manifest import REPORT_HTML_NAME, REPORT_NAME
from app.artifacts.schemas import ArtifactList
from app.deps import DbDep, SettingsDep, StoreDep, TenantDep
from app.errors import (
    ERRORS_401,
    ERRORS_404,
    PROBLEM_RESPONSE,
    NotFound,
    Responses,
    Unauthorized,
)
from app.reports.csp import CSP
from app.reports.schema import Report
from app.storage import LocalStore, ObjectNotFound

router = APIRouter(tags=["artifacts"])
ERRORS_409: Responses = {
    409: {"description": "The job has not published artifacts (not succeeded)", **PROBLEM_RESPONSE}
}


@router.get(
    "/v1/jobs/{job_id}/artifacts",
    response_model=ArtifactList,
    responses={**ERRORS_401, **ERRORS_404, **ERRORS_409},
)
async def list_artifacts(
    job_id: uuid.UUID,
    db: DbDep,
    tenant_id: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
) -> ArtifactList:
    def work(session: Session) -> ArtifactList:
        return service.artifact_list(
            session,
            tenant_id=tenant_id,
            job_id=job_id,
            store=store,
            expires_s=settings.presign_expiry_s,
        )

    return await db.run(work)


@router.get(
    "/v1/jobs/{job_id}/report",
    # Documented as the typed report (openapi/report.schema.json) but passed through as
    # stored: the worker wrote it through that model, and an older report stays readable.
    response_model=None,
    responses={
        200: {"model": Report, "description": "The evaluation report (report.json)"},
        **ERRORS_401,
        **ERRORS_404,
        **ERRORS_409,
    },
)
async def get_report(
    job_id: uuid.UUID, db: DbDep, tenant_id: TenantDep, store: StoreDep
) -> dict[str, Any]:
    prefix = await db.run(
        lambda session: service.published_prefix(session, tenant_id=tenant_id, job_id=job_id)
    )
    try:
        # Off the event loop and outside the database call: an S3 read holds no connection.
        raw = await to_thread.run_sync(store.get_bytes, f"{prefix}/{REPORT_NAME}")
        report: dict[str, Any] = json.loads(raw)
        return report
    except ObjectNotFound as exc:
        raise NotFound("report not found", code="report_not_available") from exc


@router.get(
    "/v1/jobs/{job_id}/report.html",
    response_class=HTMLResponse,
    responses={
        **ERRORS_401,
        **ERRORS_404,
        **ERRORS_409,
        200: {"content": {"text/html": {}}, "description": "Self-contained page"},
    },
)
async def get_report_html(
    job_id: uuid.UUID, db: DbDep, tenant_id: TenantDep, store: StoreDep
) -> HTMLResponse:
    """The report as a self-contained page (inline SVG charts; loads nothing else)."""
    prefix = await db.run(
        lambda session: service.published_prefix(session, tenant_id=tenant_id, job_id=job_id)
    )
    try:
        page = await to_thread.run_sync(store.get_bytes, f"{prefix}/{REPORT_HTML_NAME}")
    except ObjectNotFound as exc:
        raise NotFound("this job's report has no HTML page", code="report_not_available") from exc
    return HTMLResponse(page, headers={"Content-Security-Policy": CSP})


@router.get("/v1/files/{key:path}", include_in_schema=False)
def download_local_file(
    key: str,
    store: StoreDep,
    expires: int = Query(...),
    signature: str = Query(...),
) -> FileResponse:
    """Serves the local object store's signed links (embedded mode). S3 links go to S3."""
    if not isinstance(store, LocalStore):
        raise NotFound("not found")
    if not store.verify(key, expires, signature):
        raise Unauthorized("link expired or signature invalid", code="invalid_signature")
    try:
        path = store.local_path(key)
    except (ObjectNotFound, ValueError) as exc:
        raise NotFound("not found") from exc
    return FileResponse(path, filename=PurePosixPath(key).name)
