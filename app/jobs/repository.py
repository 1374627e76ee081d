"""All SQL about jobs, their labels and events. Functions take a Session and never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from psycopg.rows import dict_row
from sqlalchemy import CursorResult, Select, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Job, JobEvent, JobLabel
from app.jobs.state import LEASED, JobState, check, sources_for
from app.status_pool import StatusPool
from app.webhooks.repository import add_delivery

NO_SYNC = {"synchronize_session": False}


def add_event(
    session: Session,
    job_id: uuid.UUID,
    kind: str,
    message: str = "",
    *,
    state: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    event = JobEvent(job_id=job_id, kind=kind, message=message, state=state, data=data)
    session.add(event)
    if kind == "state":
        session.flush()  # the event's id names its webhook delivery
        add_delivery(session, job_id, event.id)


def add_attempt_event(
    session: Session,
    job_id: uuid.UUID,
    generation: int,
    kind: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> bool:
    """An event written by a job's attempt, fenced like its other writes: only while that
    attempt holds the lease. The row lock (FOR SHARE) orders it against a concurrent claim."""
    held = session.execute(
        select(Job.id)
        .where(
            Job.id == job_id,
            Job.lease_generation == generation,
            Job.state.in_([s.value for s in LEASED]),
        )
        .with_for_update(read=True)
    ).one_or_none()
    if held is None:
        return False
    add_event(session, job_id, kind, message, data=data)
    return True


def insert_job(
    session: Session, job: Job, labels: dict[str, str], plan: dict[str, Any] | None = None
) -> Job:
    """The new job and its first event, which names the pool it was routed to and the memory
    plan that chose it (None: the model's size was not readable at submission)."""
    job.labels = [JobLabel(key=k, value=v) for k, v in sorted(labels.items())]
    session.add(job)
    session.flush()
    routed = {"queue": job.queue, "memory_plan": plan}
    add_event(session, job.id, "state", "job accepted", state=job.state, data=routed)
    return job


def job_query(job_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Select[Job]:
    """One job (labels joined in), optionally scoped to a tenant; used sync and async."""
    query = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return query


def get_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Job | None:
    return session.scalars(job_query(job_id, tenant_id)).unique().one_or_none()


# The status endpoint is polled by every client. Through SQLAlchemy it costs ~3 ms of CPU per
# request here; this prepared statement on a psycopg pool costs ~0.4 ms (bench/status_load.py).
# Postgres only; the integration tests read every job through it.
JOB_STATUS_SQL = """
SELECT j.id, j.state, j.device, j.queue, j.priority, j.stage, j.progress, j.progress_detail,
       j.attempts, j.max_attempts,
       j.error_code, j.error_message, j.metrics, j.created_at, j.updated_at, j.started_at,
       j.finished_at, j.webhook_url, j.parent_id,
       json_build_object('model', j.spec->'model', 'recipe', j.spec->'recipe',
                         'kind', j.spec->'kind') AS spec,
       coalesce((SELECT json_object_agg(l.key, l.value) FROM job_labels l WHERE l.job_id = j.id),
                '{}'::json) AS label_map,
       CASE WHEN j.state = 'queued' THEN
         (SELECT count(*) FROM jobs q
          WHERE q.queue = j.queue AND q.state = 'queued'
            AND (q.priority > j.priority
                 OR (q.priority = j.priority AND q.created_at < j.created_at)))
       END AS queue_position
FROM jobs j
WHERE j.id = %(job_id)s AND j.tenant_id = %(tenant_id)s
"""


async def get_job_row_pg(
    pool: StatusPool, job_id: uuid.UUID, tenant_id: uuid.UUID
) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            JOB_STATUS_SQL, {"job_id": job_id, "tenant_id": tenant_id}, prepare=True
        )
        return await cursor.fetchone()


def queue_position(session: Session, job: Job) -> int | None:
    """Queued jobs of the same pool served before this one (higher priority, then older), any
    tenant's: 0 = next. As JOB_STATUS_SQL computes it; None unless the job is queued."""
    if job.state != JobState.QUEUED:
        return None
    ahead = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.queue == job.queue,
            Job.state == JobState.QUEUED,
            or_(
                Job.priority > job.priority,
                and_(Job.priority == job.priority, Job.created_at < job.created_at),
            ),
        )
    )
    return int(session.scalar(ahead) or 0)


def lock_tenant_submissions(session: Session, tenant_id: uuid.UUID) -> None:
    """A transaction-scoped Postgres advisory lock per tenant (SQLite has one writer anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(tenant_id.bytes[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def count_active_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    """A search's candidates are its own work: the search counts, they do not."""
    active = [s.value for s in (*LEASED, JobState.QUEUED, JobState.WAITING)]
    mine = [Job.tenant_id == tenant_id, Job.state.in_(active), Job.parent_id.is_(None)]
    return int(session.scalar(select(func.count()).where(*mine)) or 0)


def get_job_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return (
        session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
        .unique()
        .one_or_none()
    )


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    states: Sequence[str],
    labels: dict[str, str],
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
    parent_id: uuid.UUID | None = None,
) -> list[Job]:
    """Newest first; keyset pagination on (created_at, id) stays stable under inserts."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if parent_id is not None:
        query = query.where(Job.parent_id == parent_id)
    if states:
        query = query.where(Job.state.in_(states))
    for key, value in labels.items():
        query = query.where(
            Job.id.in_(select(JobLabel.job_id).where(JobLabel.key == key, JobLabel.value == value))
        )
    if before is not None:
        created, last_id = before
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(query).unique())


def succeeded_jobs_of_tenant(
    session: Session, tenant_id: uuid.UUID, *, limit: int = 500
) -> list[Job]:
    """The tenant's newest succeeded jobs: the population a report's size-vs-quality chart
    and /v1/compare draw from (filtered by base model in Python: `metrics` is JSON)."""
    query = (
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.state == JobState.SUCCEEDED.value)
        .order_by(Job.finished_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query).unique())


def list_events(
    session: Session, job_id: uuid.UUID, *, after_id: int, limit: int
) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def transition(
    session: Session,
    job_id: uuid.UUID,
    target: JobState,
    *,
    sources: Sequence[JobState] | None = None,
    generation: int | None = None,
    message: str = "",
    data: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Compare-and-set the job's state; returns False (and writes nothing) if it lost the race.

    `generation` fences a worker's write: it only applies while that worker's lease is current.
    """
    allowed = set(sources_for(target) if sources is None else sources)
    for source in allowed:
        check(source, target)
    now = utcnow()
    conditions = [Job.id == job_id, Job.state.in_([s.value for s in allowed])]
    if generation is not None:
        conditions.append(Job.lease_generation == generation)
    if target.value in ("succeeded", "failed", "cancelled"):
        values.setdefault("finished_at", now)
        values.setdefault("lease_expires_at", None)
    result = session.execute(
        update(Job).where(*conditions).values(state=target.value, updated_at=now, **values),
        execution_options=NO_SYNC,
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        return False
    event_data = dict(data or {})
    if generation is not None:
        event_data["lease_generation"] = generation
    add_event(session, job_id, "state", message, state=target.value, data=event_data or None)
    return True


def claim(session: Session, job_id: uuid.UUID, *, worker_id: str, lease_ttl_s: float) -> int | None:
    """Take a queued job: bump attempts and the fencing token. None if it is not ours to run."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == JobState.QUEUED.value,
            Job.attempts < Job.max_attempts,
        )
        .values(
            state=JobState.RUNNING.value,
            attempts=Job.attempts + 1,
            lease_generation=Job.lease_generation + 1,
            lease_expires_at=now + timedelta(seconds=lease_ttl_s),
            heartbeat_at=now,
            worker_id=worker_id,
            started_at=now,
            updated_at=now,
            error_code=None,
            error_message=None,
        )
        .returning(Job.lease_generation, Job.attempts),
        execution_options=NO_SYNC,
    ).one_or_none()
    if row is None:
        return None
    generation, attempts = row
    add_event(
        session,
        job_id,
        "state",
        f"claimed by {worker_id} (attempt {attempts})",
        state=JobState.RUNNING.value,
        data={"lease_generation": generation, "attempt": attempts, "worker_id": worker_id},
    )
    return int(generation)


def heartbeat(
    session: Session, job_id: uuid.UUID, *, generation: int, lease_ttl_s: float
) -> str | None:
    """Renew the lease. Returns the job's state, or None if this worker no longer holds it."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_generation == generation,
            Job.state.in_([s.value for s in LEASED]),
        )
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_ttl_s))
        .returning(Job.state),
        execution_options=NO_SYNC,
    ).one_or_none()
    return None if row is None else str(row[0])


def set_progress(
    session: Session,
    job_id: uuid.UUID,
    *,
    generation: int,
    stage: str,
    progress: float,
    detail: dict[str, Any] | None = None,
) -> str | None:
    """Fenced progress write; returns the job's state (so callers see a cancel at once)."""
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_generation == generation,
            Job.state.in_([s.value for s in LEASED]),
        )
        .values(stage=stage, progress=progress, progress_detail=detail, updated_at=utcnow())
        .returning(Job.state),
        execution_options=NO_SYNC,
    ).one_or_none()
    return None if row is None else str(row[0])


def mark_enqueued(session: Session, job_id: uuid.UUID) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()), execution_options=NO_SYNC
    )


def leased_generations(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Of these jobs, those a worker holds a lease on, with the lease's generation."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Job.id, Job.lease_generation).where(
            Job.id.in_(list(job_ids)), Job.state.in_([s.value for s in LEASED])
        )
    )
    return {job_id: generation for job_id, generation in rows}


def expired_leases(session: Session, *, now: datetime, limit: int = 100) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(Job.state.in_([s.value for s in LEASED]), Job.lease_expires_at < now)
            .limit(limit)
        ).unique()
    )


def overdue_jobs(session: Session, *, started_before: datetime, limit: int = 100) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(Job.state.in_([s.value for s in LEASED]), Job.started_at < started_before)
            .limit(limit)
        ).unique()
    )


def unsent_queued_jobs(
    session: Session, *, never_sent_before: datetime, enqueued_before: datetime, limit: int = 100
) -> list[Job]:
    """Queued jobs never sent (created before `never_sent_before`) or sent (or last seen in
    the broker) long ago; least recently checked first, so every job gets its turn."""
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.state == JobState.QUEUED.value,
                or_(
                    and_(Job.enqueued_at.is_(None), Job.created_at < never_sent_before),
                    Job.enqueued_at < enqueued_before,
                ),
            )
            .order_by(Job.enqueued_at.asc().nulls_first(), Job.created_at)
            .limit(limit)
        ).unique()
    )
