"""The artifacts table: every published file of a job (path, object key, size, sha256)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.models import Artifact


def list_artifacts(session: Session, job_id: uuid.UUID) -> list[Artifact]:
    return list(
        session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.path))
    )


def insert_artifacts(session: Session, job_id: uuid.UUID, files: Sequence[dict[str, Any]]) -> None:
    for item in files:
        session.add(
            Artifact(
                job_id=job_id,
                path=item["path"],
                object_key=item["object_key"],
                size=item["size"],
                sha256=item["sha256"],
            )
        )
