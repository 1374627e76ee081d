"""SQL about searches and their candidates (child jobs). Functions take a Session, never commit."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.state import JobState


def children(session: Session, parent_id: uuid.UUID) -> list[Job]:
    """A search's candidates, oldest first."""
    query = select(Job).where(Job.parent_id == parent_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query).unique())


def waiting_searches(session: Session, *, limit: int = 100) -> list[Job]:
    """Searches whose candidates are running, least recently looked at first."""
    query = select(Job).where(Job.state == JobState.WAITING.value).order_by(Job.updated_at)
    return list(session.scalars(query.limit(limit)).unique())
