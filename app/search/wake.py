"""Wakes waiting searches: run in every reaper round (app/jobs/reaper.py) by the API process.

A search waits while its candidates run. Once every candidate has ended (succeeded, failed
after its retries, or cancelled), or the search's time budget is spent (the candidates still
going are cancelled), the search goes back to `queued` for its second attempt, which picks the
winner. A candidate whose worker died is the reaper's like any job: re-queued, retried, and
failed only once its attempts are spent. Every move is a compare-and-set, so many API
processes may run this at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs import repository
from app.jobs.dispatch import enqueue
from app.jobs.models import Job
from app.jobs.service import stop
from app.jobs.state import TERMINAL, JobState
from app.search.repository import children, orphaned_children, waiting_searches

log = structlog.get_logger()

# The waiting search's progress runs over the candidates' share of the whole search.
CANDIDATES_SPAN = (18.0, 80.0)


def wake_once(settings: Settings) -> dict[str, int]:
    """One round over every waiting search, and over children whose search has ended."""
    counts = _wake(settings, waiting_searches)
    with session_scope(settings.database_url) as session:
        for orphan in orphaned_children(session):
            # Its search failed or was cancelled before waiting (e.g. a child sent early, then
            # the sensitivity pass failed): nobody will read what it measures.
            stop(session, orphan.id, JobState(orphan.state), "cancelled: its search ended")
            counts["candidates_cancelled"] += 1
    return counts


def wake_search(settings: Settings, search_id: uuid.UUID) -> dict[str, int]:
    """Called by the worker that ended one of the search's children, so the search's second
    attempt starts now rather than at the next reaper round (which would do the same: the
    moves are compare-and-set, only one caller sends it)."""

    def this_one(session: Session) -> list[Job]:
        search = repository.get_job(session, search_id)
        return [search] if search is not None and search.state == JobState.WAITING.value else []

    return _wake(settings, this_one)


def _wake(settings: Settings, searches: Callable[[Session], list[Job]]) -> dict[str, int]:
    counts = {"woken": 0, "candidates_cancelled": 0}
    to_send: list[tuple[uuid.UUID, str, int]] = []
    now = utcnow()
    with session_scope(settings.database_url) as session:
        for search in searches(session):
            kids = children(session, search.id)
            going = [kid for kid in kids if JobState(kid.state) not in TERMINAL]
            deadline = _deadline(search)
            late = deadline is None or now >= deadline
            if going and not late:
                _show_progress(session, search, len(kids), len(kids) - len(going))
                continue
            for kid in going:
                stop(session, kid.id, JobState(kid.state), "cancelled: the search's time ran out")
            message = (
                f"time budget spent: {len(going)} of {len(kids)} candidates cancelled; "
                "picking among those that finished"
                if going
                else f"all {len(kids)} candidates ended; picking the winner"
            )
            # A fresh attempt count: the first attempt's work is done and kept.
            if repository.transition(
                session,
                search.id,
                JobState.QUEUED,
                sources=[JobState.WAITING],
                message=message,
                attempts=0,
                progress_detail={"candidates": len(kids), "ended": len(kids) - len(going)},
            ):
                counts["woken"] += 1
                counts["candidates_cancelled"] += len(going)
                to_send.append((search.id, search.queue, search.priority))
    for job_id, queue, priority in to_send:
        with session_scope(settings.database_url) as session:
            enqueue(session, settings, job_id, queue=queue, priority=priority)
    return counts


def _deadline(search: Job) -> datetime | None:
    """The waiting search's deadline; None (with a warning) when its row holds no readable
    one: that search stops waiting, rather than its row failing the round for every search."""
    raw: Any = (search.search or {}).get("deadline")
    try:
        return datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        log.warning("search.unreadable_deadline", job_id=str(search.id), deadline=raw)
        return None


def _show_progress(session: Session, search: Job, total: int, ended: int) -> None:
    """The waiting search's progress: the share of its candidates that ended."""
    detail = {"candidates": total, "ended": ended}
    if search.progress_detail == detail:
        return
    low, high = CANDIDATES_SPAN
    session.execute(
        update(Job)
        .where(Job.id == search.id, Job.state == JobState.WAITING.value)
        .values(progress=low + (high - low) * ended / max(total, 1), progress_detail=detail),
        execution_options=repository.NO_SYNC,
    )
