"""Artifact use-cases: which files a job published, with download links, and reading its
report. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from app.artifacts import repository
from app.artifacts.manifest import MANIFEST_NAME
from app.artifacts.schemas import ArtifactList, ArtifactRead
from app.errors import Conflict
from app.jobs import service as job_service
from app.storage import ObjectStore


def published_prefix(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """Where the job's files are; 404 for another tenant's job, 409 before it published."""
    job = job_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.artifact_prefix is None:
        # The job exists; its outputs do not yet (or never will): 409, not 404, so a client
        # polling a fresh job does not read "no such job".
        raise Conflict(
            f"job {job_id} has no published artifacts (state {job.state})",
            code="artifacts_not_available",
        )
    return job.artifact_prefix


def artifact_list(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    store: ObjectStore,
    expires_s: int,
) -> ArtifactList:
    prefix = published_prefix(session, tenant_id=tenant_id, job_id=job_id)
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
    items = [
        ArtifactRead(
            path=a.path,
            size=a.size,
            sha256=a.sha256,
            url=store.presigned_url(a.object_key, expires_s, PurePosixPath(a.path).name),
            url_expires_at=expires_at,
        )
        for a in repository.list_artifacts(session, job_id)
    ]
    manifest_url = store.presigned_url(f"{prefix}/{MANIFEST_NAME}", expires_s, MANIFEST_NAME)
    return ArtifactList(job_id=job_id, manifest_url=manifest_url, items=items)
