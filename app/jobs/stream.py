"""A job's events and progress as Server-Sent Events (`GET /v1/jobs/{id}/stream`).

Each job event is one SSE message whose `id` is the event's id, so a client that reconnects
with `Last-Event-ID` (every EventSource does) resumes exactly after the last event it received:
no loss, no duplicate. Progress (stage, percentage, counters) goes out as `progress` messages
without an id: a snapshot, never replayed. Once the job is terminal and every event is out, an
`end` message closes the stream.

The stream polls the database (one short query per POLL_S, no connection held in between)
rather than LISTEN/NOTIFY: it works the same on the embedded SQLite stack, and a poll every
half second is what the status endpoint already serves far more often.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
from sqlalchemy.orm import Session

from app.db import SessionRunner
from app.jobs import repository, service
from app.jobs.schemas import EventRead
from app.jobs.state import TERMINAL, JobState

POLL_S = 0.5
KEEPALIVE_S = 15.0  # a comment line, so proxies do not close an idle stream
MAX_STREAM_S = 3600.0  # then the stream ends; the client reconnects with Last-Event-ID
RETRY_MS = 2000  # the reconnection delay clients are told to use
BATCH = 200


@dataclass(frozen=True)
class Snapshot:
    events: list[EventRead]
    progress: dict[str, object]
    terminal: bool


def read_snapshot(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, after: int
) -> Snapshot:
    # The job first: an event written after this read is picked up by the next poll, so the
    # stream ends only once the job was terminal *before* its last events were read.
    job = service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    terminal = JobState(job.state) in TERMINAL
    progress: dict[str, object] = {
        "state": job.state,
        "stage": job.stage,
        "progress": round(job.progress, 2),
        "progress_detail": job.progress_detail,
    }
    events = repository.list_events(session, job_id, after_id=after, limit=BATCH)
    return Snapshot([service.event_to_read(e) for e in events], progress, terminal)


def message(data: str, *, event: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def job_stream(
    db: SessionRunner,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    after: int,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    started = last_sent = time.monotonic()
    last_progress: dict[str, object] | None = None
    while time.monotonic() - started < MAX_STREAM_S and not await disconnected():
        snapshot = await db.run(
            partial(read_snapshot, tenant_id=tenant_id, job_id=job_id, after=after)
        )
        for event in snapshot.events:
            yield message(event.model_dump_json(), event="job_event", event_id=event.id)
            after = event.id
        sent = bool(snapshot.events)
        if snapshot.progress != last_progress:
            yield message(json.dumps(snapshot.progress), event="progress")
            last_progress, sent = snapshot.progress, True
        if sent:
            last_sent = time.monotonic()
        if snapshot.terminal and len(snapshot.events) < BATCH:
            yield message(json.dumps({"state": snapshot.progress["state"]}), event="end")
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if len(snapshot.events) < BATCH:
            await anyio.sleep(POLL_S)
