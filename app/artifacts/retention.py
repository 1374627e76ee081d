"""What is kept after a job ends: training checkpoints serve retries only."""

from __future__ import annotations

import uuid

import structlog

from app.artifacts.manifest import checkpoint_prefix
from app.config import Settings
from app.storage import make_store

log = structlog.get_logger()


def drop_checkpoints(settings: Settings, job_id: uuid.UUID) -> None:
    """Delete a job's training checkpoints once it has ended for good (succeeded or failed, by
    its worker or by the reaper). A cancelled job keeps its last one (the trained-so-far
    student) for the operator's lifecycle rule to expire. Best effort: a failure is logged."""
    try:
        removed = make_store(settings).delete_prefix(checkpoint_prefix(job_id))
    except Exception:  # an unreachable store must not undo the job's outcome
        log.warning("job.checkpoint_cleanup_failed", job_id=str(job_id), exc_info=True)
        return
    if removed:
        log.info("job.checkpoints_dropped", job_id=str(job_id), objects=removed)
