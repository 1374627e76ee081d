"""One job attempt: claim → resolve source → evaluate original → stages → save → load check →
evaluate compressed → upload → manifest last → `succeeded` (all fenced by the lease)."""

from __future__ import annotations

import os
import shutil
import sys
import traceback
import uuid
from typing import Any

import structlog

from app.artifacts import repository as artifact_repository
from app.artifacts.retention import drop_attempt, drop_attempts, drop_checkpoints
from app.config import Settings
from app.db import session_scope
from app.jobs import repository
from app.jobs.dispatch import enqueue, requeue
from app.jobs.state import ErrorCode, JobState
from app.search.wake import wake_search
from workers import faults
from workers import metrics as worker_metrics
from workers.context import JobContext
from workers.errors import JobCancelled, JobFailure, LeaseLost, Suspended, TransientFailure
from workers.scratch import scratch_dir, sweep_quietly

log = structlog.get_logger()


def run(job_id: uuid.UUID, settings: Settings, *, worker_id: str) -> None:
    if settings.fault_injection:
        with session_scope(settings.database_url) as session:
            job = repository.get_job(session, job_id)
            labels = {label.key: label.value for label in job.labels} if job else {}
        faults.hold_before_claim(settings, labels, job_id)
    with session_scope(settings.database_url) as session:
        generation = repository.claim(
            session, job_id, worker_id=worker_id, lease_ttl_s=settings.lease_ttl_s
        )
        job = repository.get_job(session, job_id)
        labels = {label.key: label.value for label in job.labels} if job else {}
    if generation is None or job is None:
        log.info("job.not_claimed", job_id=str(job_id), state=job.state if job else None)
        if job is not None and job.state in (JobState.CANCELLED, JobState.FAILED):
            # Nothing of it is published: whatever a dead attempt left goes (the API's cancel
            # tried already; this covers a store that was down then).
            drop_attempts(settings, job_id, older_than=None)
        return
    log.info("job.claimed", job_id=str(job_id), generation=generation, worker=worker_id)
    ctx = JobContext(job_id, generation, settings)
    ctx.parent_id = job.parent_id  # a search's child wakes its search when it ends
    ctx.fault_hold = faults.hold_point_for(settings, labels, job.attempts)
    ctx.on_unacknowledged_cancel = lambda: _stop_inside_a_call(settings, ctx)
    scratch = scratch_dir(settings, job_id, generation)
    sweep_quietly(settings)
    ctx.start()
    try:
        from workers.job.execute import execute

        published = execute(ctx, job.spec, device_pref=job.device, scratch=scratch)
        ctx.fault_point("before_commit")
        _finish(settings, ctx, JobState.SUCCEEDED, "job succeeded", **published)
    except Suspended as handed_on:
        log.info("job.suspended", job_id=str(job_id), detail=str(handed_on))
    except JobCancelled:
        _finish(settings, ctx, JobState.CANCELLED, "cancelled by user")
    except LeaseLost:
        log.warning("job.lease_lost", job_id=str(job_id), generation=generation)
        drop_attempt(settings, job_id, generation)
    except JobFailure as exc:
        _fail(settings, ctx, exc.code, exc.message)
    except TransientFailure as exc:
        # `job` was read after the claim, so its attempts already count this one.
        _retry_or_fail(settings, ctx, job.attempts, job.max_attempts, str(exc), exc.code)
    except Exception as exc:
        log.error("job.internal_error", job_id=str(job_id), exc_info=True)
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _fail(settings, ctx, ErrorCode.INTERNAL_ERROR, detail[:2000])
    finally:
        ctx.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _stop_inside_a_call(settings: Settings, ctx: JobContext) -> None:
    """Called by the heartbeat thread when a cancelled job reached no check point within
    CANCEL_GRACE_S: its thread is inside one long library call that cannot be interrupted, so
    the job ends here and the process exits. The commit is fenced like the job's own (if the
    attempt finished meanwhile, nothing happens). Celery sees its child gone and gives the
    message back (reject_on_worker_lost); the worker that takes it finds the job cancelled and
    deletes whatever this attempt uploaded after the deletion below; the next claim on this
    machine sweeps the scratch folder (workers/scratch.py)."""
    with session_scope(settings.database_url) as session:
        moved = repository.transition(
            session,
            ctx.job_id,
            JobState.CANCELLED,
            sources=[JobState.CANCEL_REQUESTED],
            generation=ctx.generation,
            message="cancelled by user (stopped inside a long call)",
        )
    if not moved:
        return
    log.warning("job.cancel_forced", job_id=str(ctx.job_id), generation=ctx.generation)
    drop_attempt(settings, ctx.job_id, ctx.generation)
    sys.stdout.flush()
    os._exit(0)


def _finish(
    settings: Settings, ctx: JobContext, target: JobState, message: str, **values: Any
) -> None:
    artifacts = values.pop("artifacts", [])
    # Before the commit, so a reader who sees the final state sees only what it publishes: dead
    # attempts' files (an older generation can never publish), and this attempt's own unless it
    # publishes them (they are under its own prefix: no other attempt's files).
    drop_attempts(settings, ctx.job_id, older_than=ctx.generation)
    if target is not JobState.SUCCEEDED:
        drop_attempt(settings, ctx.job_id, ctx.generation)
    with session_scope(settings.database_url) as session:
        sources = [JobState.RUNNING, JobState.CANCEL_REQUESTED]
        if target is JobState.SUCCEEDED:
            values.update(progress=100.0, stage="done")
        moved = repository.transition(
            session,
            ctx.job_id,
            target,
            sources=sources,
            generation=ctx.generation,
            message=message,
            **values,
        )
        if moved and artifacts:
            artifact_repository.insert_artifacts(session, ctx.job_id, artifacts)
    log.info("job.finished", job_id=str(ctx.job_id), state=target.value, applied=moved)
    worker_metrics.job_done(target.value if moved else "superseded")
    if not moved:
        # Another attempt owns the job (this one was presumed dead): its files are not ours.
        drop_attempt(settings, ctx.job_id, ctx.generation)
        return
    if target in (JobState.SUCCEEDED, JobState.FAILED):
        drop_checkpoints(settings, ctx.job_id)
    if ctx.parent_id is not None:
        _wake_parent(settings, ctx.parent_id)


def _wake_parent(settings: Settings, search_id: uuid.UUID) -> None:
    """A search's child ended: if it was the last, the search's second attempt goes to the
    queue now (the API's reaper round would, later). Best effort: a failure here is that
    round's to retry, never this job's."""
    try:
        wake_search(settings, search_id)
    except Exception:
        log.warning("search.wake_failed", search_id=str(search_id), exc_info=True)


def _fail(settings: Settings, ctx: JobContext, code: ErrorCode, message: str) -> None:
    _finish(
        settings,
        ctx,
        JobState.FAILED,
        f"failed: {code}",
        error_code=code.value,
        error_message=message,
    )


def _retry_or_fail(
    settings: Settings,
    ctx: JobContext,
    attempts: int,
    max_attempts: int,
    message: str,
    code: ErrorCode = ErrorCode.MAX_ATTEMPTS_EXCEEDED,
) -> None:
    if attempts >= max_attempts:
        _fail(settings, ctx, code, f"{message} ({attempts} of {max_attempts} attempts)")
        return
    with session_scope(settings.database_url) as session:
        moved = requeue(
            session,
            ctx.job_id,
            generation=ctx.generation,
            message=f"transient error, retrying: {message}",
        )
        job = repository.get_job(session, ctx.job_id)
    if moved and job is not None:
        worker_metrics.job_done("retried")
        with session_scope(settings.database_url) as session:
            enqueue(session, settings, job.id, queue=job.queue, priority=job.priority)
