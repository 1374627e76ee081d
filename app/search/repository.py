"""SQL about searches and their candidates (child jobs). Functions take a Session, never commit."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from app.jobs.models import Job
from app.jobs.state import TERMINAL, JobState


def children(session: Session, parent_id: uuid.UUID) -> list[Job]:
    """A search's candidates, oldest first."""
    query = select(Job).where(Job.parent_id == parent_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query).unique())


def waiting_searches(session: Session, *, limit: int = 100) -> list[Job]:
    """Searches whose candidates are running, least recently looked at first."""
    query = select(Job).where(Job.state == JobState.WAITING.value).order_by(Job.updated_at)
    return list(session.scalars(query.limit(limit)).unique())


def orphaned_children(session: Session, *, limit: int = 100) -> list[Job]:
    """Children still queued or running whose search has ended."""
    parent = aliased(Job)
    ended = [state.value for state in TERMINAL]
    stopping = [*ended, JobState.CANCEL_REQUESTED.value]  # asked already
    query = (
        select(Job)
        .join(parent, Job.parent_id == parent.id)
        .where(parent.state.in_(ended), Job.state.not_in(stopping))
    )
    return list(session.scalars(query.limit(limit)).unique())
