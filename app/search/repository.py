"""SQL about searches and their candidates (child jobs). Functions take a Session, never commit."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, aliased

from app.jobs.models import Job
from app.jobs.repository import NO_SYNC
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


def save_state(
    session: Session, search_id: uuid.UUID, generation: int, state: dict[str, Any]
) -> bool:
    """The running search's own state (`jobs.search`), fenced by its attempt's lease."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == search_id,
            Job.lease_generation == generation,
            Job.state == JobState.RUNNING.value,
        )
        .values(search=state),
        execution_options=NO_SYNC,
    )
    return cast(CursorResult[Any], result).rowcount == 1
