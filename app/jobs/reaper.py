"""Recovers jobs the happy path lost. Safe to run in many processes at once: every move is a
compare-and-set on the job's lease generation, so only one reaper (or worker) wins each job.

- A leased job whose worker stopped heartbeating (lease expired) goes back to `queued` and is
  re-sent, or ends `failed` once its attempts are spent; a `cancel_requested` one ends `cancelled`.
- A job running longer than MAX_JOB_RUNTIME_S ends `failed` (timeout); its worker sees the lost
  lease at its next heartbeat and stops.
- A queued job whose message never reached the broker is sent; one whose message vanished from
  it (looked up there: app/broker_inventory.py) is re-sent. A message that is still waiting,
  however long, is left alone, so a backlog is never multiplied.
- A waiting search whose candidates have all ended, or whose time budget is spent, is queued
  for its second attempt (app/search/wake.py).
- Sending stops at a round's first broker failure: the lease checks of the next round are not
  held up by a broker that is down (the rest is sent when it is back).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import structlog
from sqlalchemy.orm import Session

from app.artifacts.retention import drop_attempts, drop_checkpoints
from app.background import PeriodicThread
from app.broker_inventory import jobs_with_messages
from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs import repository
from app.jobs.dispatch import enqueue, requeue
from app.jobs.state import ErrorCode, JobState
from app.queue import pool_queues
from app.search.wake import wake_once

log = structlog.get_logger()


def reap_once(settings: Settings) -> dict[str, int]:
    counts = {
        "requeued": 0,
        "failed": 0,
        "cancelled": 0,
        "timed_out": 0,
        "resent": 0,  # sent before, message gone from the broker
        "sent_late": 0,  # never reached the broker (it was down when the job was accepted)
        "still_waiting": 0,
        "send_failed": 0,
    }
    now = utcnow()
    to_send: list[tuple[uuid.UUID, str, int]] = []
    # Ended here: their unpublished attempts (and, unless cancelled, checkpoints) go once the
    # moves committed.
    ended: list[uuid.UUID] = []
    cancelled: set[uuid.UUID] = set()
    with session_scope(settings.database_url) as session:
        for job in repository.expired_leases(session, now=now):
            gen = job.lease_generation
            silent = f"worker {job.worker_id} stopped heartbeating (last {job.heartbeat_at})"
            if job.state == JobState.CANCEL_REQUESTED:
                if repository.transition(
                    session, job.id, JobState.CANCELLED, generation=gen, message=silent
                ):
                    ended.append(job.id)
                    cancelled.add(job.id)
                    counts["cancelled"] += 1
            elif job.attempts >= job.max_attempts:
                if repository.transition(
                    session,
                    job.id,
                    JobState.FAILED,
                    generation=gen,
                    message=silent,
                    error_code=ErrorCode.MAX_ATTEMPTS_EXCEEDED.value,
                    error_message=f"{silent}; {job.attempts} of {job.max_attempts} attempts used",
                ):
                    ended.append(job.id)
                    counts["failed"] += 1
            elif requeue(session, job.id, generation=gen, message=f"{silent}; retrying"):
                counts["requeued"] += 1
                to_send.append((job.id, job.queue, job.priority))

        started_before = now - timedelta(seconds=settings.max_job_runtime_s)
        for job in repository.overdue_jobs(session, started_before=started_before):
            if repository.transition(
                session,
                job.id,
                JobState.FAILED,
                generation=job.lease_generation,
                message="maximum runtime exceeded",
                error_code=ErrorCode.TIMEOUT.value,
                error_message=f"ran longer than {settings.max_job_runtime_s:.0f}s",
            ):
                ended.append(job.id)
                counts["timed_out"] += 1

        _lost_messages(session, settings, now, to_send, counts)
    for job_id in ended:
        drop_attempts(settings, job_id, older_than=None)
        if job_id not in cancelled:
            drop_checkpoints(settings, job_id)
    # Send only after the moves above committed (a worker must find the job `queued`). The
    # first failure ends the round's sending: the rest stay unmarked and go next round.
    for index, (job_id, queue, priority) in enumerate(to_send):
        with session_scope(settings.database_url) as session:
            if not enqueue(session, settings, job_id, queue=queue, priority=priority):
                counts["send_failed"] = len(to_send) - index
                break
    # Searches whose candidates have ended (app/search/wake.py): after the moves above, so a
    # candidate that just ran out of attempts counts as ended in this same round.
    counts.update(wake_once(settings))
    if any(counts.values()):
        log.info("reaper.round", **counts)
    return counts


def _lost_messages(
    session: Session,
    settings: Settings,
    now: datetime,
    to_send: list[tuple[uuid.UUID, str, int]],
    counts: dict[str, int],
) -> None:
    """Adds to `to_send` the queued jobs never sent, and those sent over REQUEUE_AFTER_S ago
    whose message is no longer in the broker."""
    resend_before = now - timedelta(seconds=settings.requeue_after_s)
    never_sent_before = now - timedelta(seconds=settings.reaper_interval_s)
    stale = repository.unsent_queued_jobs(
        session, never_sent_before=never_sent_before, enqueued_before=resend_before
    )
    waiting = _waiting(settings) if any(j.enqueued_at for j in stale) else set()
    for job in stale:
        if (job.id, job.queue, job.priority) in to_send:
            continue
        if job.enqueued_at is not None and waiting is False:
            continue  # the broker is down: nothing can be sent, look again next round
        if job.enqueued_at is not None and isinstance(waiting, set) and job.id in waiting:
            # Still in the broker: checked again in REQUEUE_AFTER_S, and the next-oldest jobs
            # get their turn meanwhile.
            repository.mark_enqueued(session, job.id)
            counts["still_waiting"] += 1
            continue
        to_send.append((job.id, job.queue, job.priority))
        counts["resent" if job.enqueued_at is not None else "sent_late"] += 1


def _waiting(settings: Settings) -> set[uuid.UUID] | bool:
    """Jobs with a message in the broker; True when it cannot be listed (re-send by age, the
    rule for brokers like RabbitMQ), False when it is unreachable (nothing can be sent now)."""
    try:
        present = jobs_with_messages(
            settings, pool_queues(settings), fresh_s=settings.requeue_after_s
        )
    except Exception:  # the broker is down: leave the messages be, look again next round
        log.warning("reaper.broker_inventory_failed", exc_info=True)
        return False
    return True if present is None else present


def reaper_thread(settings: Settings) -> PeriodicThread:
    return PeriodicThread("squash-reaper", settings.reaper_interval_s, lambda: reap_once(settings))
