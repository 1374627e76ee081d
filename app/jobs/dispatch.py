"""Putting a job in the queue: the one home of "send the message, then mark it enqueued" and of
"move a running job back to queued", used by the router, the reaper and the worker's retry.

Postgres is the source of truth: the message is only a wake-up call. A job is sent after the
move that made it `queued` committed (a worker must find it queued), and a send that fails loses
nothing: the reaper re-sends queued jobs whose message never went out.
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.orm import Session

from app.config import Settings
from app.jobs import repository
from app.jobs.state import JobState
from app.queue import send_run_job

log = structlog.get_logger()


def enqueue(
    session: Session, settings: Settings, job_id: uuid.UUID, *, queue: str, priority: int
) -> bool:
    """Send the job's message, then mark it enqueued and commit (the move that made the job
    `queued` has committed before: `session` holds nothing else). Returns False, raising
    nothing, when the broker or the database fails: the reaper re-sends queued jobs whose
    message is not marked (a message sent twice is harmless: only one claim wins)."""
    try:
        send_run_job(settings, job_id, queue=queue, priority=priority)
        repository.mark_enqueued(session, job_id)
        session.commit()
    except Exception:  # broker or database down: the reaper tries again
        log.warning("job.enqueue_failed", job_id=str(job_id), exc_info=True)
        session.rollback()
        return False
    return True


def requeue(session: Session, job_id: uuid.UUID, *, generation: int, message: str) -> bool:
    """Move a running attempt's job back to `queued` for another attempt, fenced by the
    attempt's lease generation: no worker, no lease, and a fresh stage and progress (the next
    attempt starts from the beginning; what it resumes from, e.g. training checkpoints, it
    reports itself). False if the attempt no longer owns the job."""
    return repository.transition(
        session,
        job_id,
        JobState.QUEUED,
        sources=[JobState.RUNNING],
        generation=generation,
        message=message,
        worker_id=None,
        lease_expires_at=None,
        stage=None,
        progress=0.0,
        progress_detail=None,
    )
