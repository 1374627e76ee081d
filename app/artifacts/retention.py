"""What is kept after a job ends: training checkpoints serve retries only."""

from __future__ import annotations

import uuid

import structlog

from app.artifacts.manifest import attempt_prefix, checkpoint_prefix
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


def drop_attempts(settings: Settings, job_id: uuid.UUID, *, older_than: int | None) -> None:
    """Delete the files of a job's dead attempts and abort their unfinished multipart uploads:
    those with a generation below `older_than`, or every attempt when None (the job failed or
    was cancelled: nothing of it is published).

    An attempt killed after its upload leaves complete-looking files, even a manifest, under
    its own prefix; only the job row says which attempt won. A worker calls this *before* its
    finishing commit with its own generation: an older attempt can never publish (the lease
    generation only grows), so a reader who sees `succeeded` sees the winner's files only.
    Best effort: a failure is logged and the job's outcome stands."""
    root = f"jobs/{job_id}"
    try:
        store = make_store(settings)
        doomed = [
            name
            for name in store.child_prefixes(root)
            if older_than is None or (name.isdigit() and int(name) < older_than)
        ]
        removed = aborted = 0
        for name in doomed:
            aborted += store.abort_multipart_uploads(f"{root}/{name}")
            removed += store.delete_prefix(f"{root}/{name}")
    except Exception:
        log.warning("job.attempt_cleanup_failed", job_id=str(job_id), exc_info=True)
        return
    if removed or aborted:
        log.info("job.attempts_dropped", job_id=str(job_id), objects=removed, uploads=aborted)


def drop_attempt(settings: Settings, job_id: uuid.UUID, generation: int) -> None:
    """One attempt's own files: it lost its lease, or its job ended without publishing."""
    try:
        store = make_store(settings)
        store.abort_multipart_uploads(attempt_prefix(job_id, generation))
        store.delete_prefix(attempt_prefix(job_id, generation))
    except Exception:
        log.warning("job.attempt_cleanup_failed", job_id=str(job_id), exc_info=True)
