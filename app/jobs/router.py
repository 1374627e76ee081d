from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from app.artifacts.retention import drop_attempts
from app.deps import DbDep, SettingsDep, SubmitLimitDep, TenantDep
from app.errors import (
    ERRORS_401,
    ERRORS_403,
    ERRORS_404,
    ERRORS_422,
    PROBLEM_RESPONSE,
    NotFound,
)
from app.jobs import service
from app.jobs.dispatch import enqueue
from app.jobs.schemas import LABEL_KEY_RE, EventPage, JobCreate, JobPage, JobRead
from app.jobs.state import JobState
from app.jobs.stream import job_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# key=value: the key as labels are written (LABEL_KEY_RE), a value without NUL (Postgres text
# cannot hold one) of at most 255 characters.
LabelFilter = Annotated[
    str, StringConstraints(pattern=rf"{LABEL_KEY_RE.pattern.removesuffix('$')}=[^\x00]{{0,255}}$")
]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={**ERRORS_401, **ERRORS_403, **ERRORS_422},
)
async def submit_job(
    body: JobCreate,
    response: Response,
    db: DbDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    _limited: SubmitLimitDep,
    # Not empty: an empty key would be stored, and every later empty key would collide with it.
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobRead:
    def work(session: Session) -> tuple[JobRead, bool]:
        job, created = service.create_job(
            session,
            tenant_id=tenant_id,
            body=body,
            idempotency_key=idempotency_key,
            settings=settings,
        )
        session.commit()  # 202 only once the job is durable; the message goes after the commit
        if created:
            enqueue(session, settings, job.id, queue=job.queue, priority=job.priority)
        return service.to_read(job), created

    read, created = await db.run(work)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{read.id}"
    return read


@router.get("", response_model=JobPage, responses={**ERRORS_401, **ERRORS_422})
async def list_jobs(
    db: DbDep,
    tenant_id: TenantDep,
    state: Annotated[list[JobState], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    label: Annotated[list[LabelFilter], Query(description="key=value; repeat to AND")] = [],  # noqa: B006
    cursor: Annotated[
        str | None,
        Query(
            pattern=service.CURSOR_PATTERN,
            description="The `next_cursor` of the page before (a position: newest first)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    parent_id: Annotated[
        uuid.UUID | None, Query(description="Only this search's candidates")
    ] = None,
) -> JobPage:
    def work(session: Session) -> JobPage:
        jobs, next_cursor = service.list_jobs(
            session,
            tenant_id=tenant_id,
            states=state,
            labels=label,
            cursor=cursor,
            limit=limit,
            parent_id=parent_id,
        )
        return JobPage(items=[service.to_read(job) for job in jobs], next_cursor=next_cursor)

    return await db.run(work)


@router.get("/{job_id}", response_model=JobRead, responses={**ERRORS_401, **ERRORS_404})
async def get_job(job_id: uuid.UUID, request: Request, db: DbDep, tenant_id: TenantDep) -> Response:
    # The endpoint every client polls: on the event loop's status pool, no thread hop
    # (bench/status_load.py, bench/api_load.py). SQLite (embedded mode): the ORM on a thread.
    pool = request.app.state.pg_pool
    if pool is not None:
        read = await service.read_job_pg(pool, tenant_id=tenant_id, job_id=job_id)
    else:
        read = await db.run(
            lambda session: service.read_job(session, tenant_id=tenant_id, job_id=job_id)
        )
    if read is None:
        raise NotFound(f"job {job_id} not found")
    # Serialized once here; returning the model would make FastAPI validate it a second time.
    return Response(read.model_dump_json(), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={
        **ERRORS_401,
        **ERRORS_404,
        409: {"description": "Already finished", **PROBLEM_RESPONSE},
    },
)
async def cancel_job(
    job_id: uuid.UUID,
    db: DbDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> JobRead:
    def work(session: Session) -> JobRead:
        return service.to_read(service.cancel_job(session, tenant_id=tenant_id, job_id=job_id))

    read = await db.run(work, commit=True)
    if read.state is JobState.CANCELLED and read.attempts:
        # Cancelled while queued after an attempt died (killed, re-queued by the reaper): that
        # attempt may have left files, even a manifest. A cancelled job keeps none; deleted
        # after the answer (object-store calls), and again by any worker that gets its message.
        background.add_task(drop_attempts, settings, read.id, older_than=None)
    return read


@router.get("/{job_id}/events", response_model=EventPage, responses={**ERRORS_401, **ERRORS_404})
async def list_events(
    job_id: uuid.UUID,
    db: DbDep,
    tenant_id: TenantDep,
    # Event ids are Postgres bigints: a larger `after` is a 422, not an overflow (a 500).
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Return events with id > after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventPage:
    def work(session: Session) -> EventPage:
        events, next_after = service.list_events(
            session, tenant_id=tenant_id, job_id=job_id, after_id=after, limit=limit
        )
        return EventPage(items=[service.event_to_read(e) for e in events], next_after=next_after)

    return await db.run(work)


STREAM_ANSWER = {
    "description": "Server-Sent Events until the job ends: `job_event` messages (data: an "
    "EventRead; id: the event id, so `Last-Event-ID` resumes after it), `progress` messages "
    "(state, stage, progress, progress_detail; no id), then one `end`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.get(
    "/{job_id}/stream",
    response_class=StreamingResponse,
    responses={200: STREAM_ANSWER, **ERRORS_401, **ERRORS_404},
)
async def stream_events(
    job_id: uuid.UUID,
    request: Request,
    db: DbDep,
    tenant_id: TenantDep,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Start after this event id (0: all)")
    ] = 0,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=2**63 - 1,
            description="Sent by a reconnecting EventSource; wins over `after`",
        ),
    ] = None,
) -> StreamingResponse:
    """The job's events and progress, live (the polling alternative: GET …/events)."""
    # A missing job is a 404 now, not an empty stream.
    await db.run(lambda session: service.get_job(session, tenant_id=tenant_id, job_id=job_id))
    return StreamingResponse(
        job_stream(
            db,
            tenant_id=tenant_id,
            job_id=job_id,
            after=after if last_event_id is None else last_event_id,
            disconnected=request.is_disconnected,
        ),
        media_type="text/event-stream",
        # No caching, and no buffering by a proxy (nginx honours X-Accel-Buffering).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
