"""Response bodies of /v1/jobs/{id}/artifacts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class ArtifactRead(BaseModel):
    path: str
    size: int
    sha256: str
    url: str
    url_expires_at: datetime


class ArtifactList(BaseModel):
    job_id: uuid.UUID
    manifest_url: str
    items: list[ArtifactRead]
