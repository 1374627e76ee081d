"""Job use-cases: create, read, list, cancel. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, Forbidden, InvalidInput, NotFound, TooManyRequests
from app.jobs import repository
from app.jobs.models import Job, JobEvent
from app.jobs.schemas import EventRead, JobCreate, JobError, JobLinks, JobRead, JobSpec
from app.jobs.state import TERMINAL, JobState
from app.json_paths import walk
from app.planning.submission import route_submission
from app.recipes import BUILTIN_SHAPES, Stage, check_gguf_outputs, validate_recipe
from app.search import repository as search_repository
from app.search.spec import tolerance_errors
from app.source_policy import check_sources
from app.sources import BuiltinModel
from app.status_pool import StatusPool
from app.webhooks.urls import RefusedDestination, UnsafeWebhookUrl, check_webhook_url


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    body: JobCreate,
    idempotency_key: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Returns (job, created). A repeated Idempotency-Key with the same body returns the
    original job; with another body it is refused."""
    stages = checked_stages(body)
    check_body(body, tenant_id=tenant_id, settings=settings)
    digest = request_hash(body)
    if idempotency_key:
        existing = repository.get_job_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    check_quota(session, tenant_id, settings)
    device = body.device or settings.default_device
    # The recipe with every default filled in: what the worker runs.
    spec = JobSpec.of_request(body, [stage.as_json() for stage in stages])
    routing = route_submission(spec, [stage.params for stage in stages], device, settings)
    job = Job(
        tenant_id=tenant_id,
        state=JobState.QUEUED.value,
        device=device,
        queue=routing.queue,
        priority=body.priority,
        spec=spec.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        request_hash=digest,
        max_attempts=settings.max_attempts,
        webhook_url=body.webhook_url,
    )
    plan = routing.plan.as_json() if routing.plan else None
    if not idempotency_key:
        return repository.insert_job(session, job, body.labels, plan), True
    try:
        # A savepoint only where a concurrent duplicate can collide (two round trips saved
        # on every submission without a key).
        with session.begin_nested():
            repository.insert_job(session, job, body.labels, plan)
    except IntegrityError:
        # A concurrent request with the same key won the insert; answer with its job.
        existing = repository.get_job_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest), False
    return job, True


def checked_stages(body: JobCreate) -> list[Stage]:
    """The recipe validated (against the built-in model's layer sizes, which are known here;
    other sources are checked again by the worker)."""
    shape = BUILTIN_SHAPES.get(body.model.name) if isinstance(body.model, BuiltinModel) else None
    if (body.search is None) != (body.kind != "search"):
        raise InvalidInput(
            "`search` goes with kind `search`, and only with it",
            code="invalid_recipe",
            field="search",
        )
    if body.search is not None:
        for error in tolerance_errors(body.search, [t.name for t in body.evaluation.tasks]):
            raise InvalidInput(
                error, code="invalid_recipe", field="search.quality.max_accuracy_drop.task"
            )
    if body.kind in ("evaluate", "search"):
        if body.recipe:
            raise InvalidInput(
                f"a {body.kind} job takes no recipe"
                + (
                    ": it measures the model as it is"
                    if body.kind == "evaluate"
                    else ": its candidates' recipes are what it searches"
                ),
                code="invalid_recipe",
                field="recipe",
            )
        if body.output.gguf:
            check_gguf_outputs([], evaluate=True)
        return []
    stages = validate_recipe(body.recipe, shape=shape)
    if body.output.gguf:
        check_gguf_outputs(stages)
    return stages


def check_body(body: JobCreate, *, tenant_id: uuid.UUID, settings: Settings) -> None:
    """What the schema cannot say: a safe webhook URL, no NUL anywhere, allowed sources."""
    if body.webhook_url is not None:
        try:
            check_webhook_url(body.webhook_url, allowed_hosts=settings.webhook_allowed_hosts)
        except RefusedDestination as error:
            raise Forbidden(
                f"webhook_url {error}", code="webhook_not_allowed", field="webhook_url"
            ) from None
        except UnsafeWebhookUrl as error:
            raise InvalidInput(
                f"webhook_url {error}", code="invalid_webhook_url", field="webhook_url"
            ) from None
    body_json = body.model_dump(mode="json")
    for path, value in walk(body_json):
        # Postgres text and jsonb cannot hold NUL: refuse it here, naming the field, not as a 500.
        if (isinstance(value, str) and "\x00" in value) or (
            isinstance(value, dict) and any("\x00" in key for key in value)
        ):
            raise InvalidInput(f"{path or 'body'}: NUL characters are not allowed", field=path)
    check_sources(body_json, tenant_id=tenant_id, settings=settings)


def check_quota(session: Session, tenant_id: uuid.UUID, settings: Settings) -> None:
    if not settings.max_active_jobs_per_tenant:
        return
    # Serialise this tenant's submissions so concurrent ones cannot both pass the count.
    repository.lock_tenant_submissions(session, tenant_id)
    active = repository.count_active_jobs(session, tenant_id)
    if active >= settings.max_active_jobs_per_tenant:
        raise TooManyRequests(
            f"{active} jobs queued or running: at most {settings.max_active_jobs_per_tenant}"
            " at once per tenant; retry when one has finished",
            retry_after_s=settings.quota_retry_after_s,
            code="quota_exceeded",
        )


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise InvalidInput(
            "Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    return existing


def get_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = repository.get_job(session, job_id, tenant_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def read_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobRead | None:
    job = repository.get_job(session, job_id, tenant_id)
    if job is None:
        return None
    return to_read(job, queue_position=repository.queue_position(session, job))


async def read_job_pg(
    pool: StatusPool, *, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> JobRead | None:
    """The status poll: one row over the event loop's status pool, no ORM, no thread."""
    row = await repository.get_job_row_pg(pool, job_id, tenant_id)
    return row_to_read(row) if row else None


# A page position: the last job's creation time (microseconds since the epoch) and id. Every
# string CURSOR_PATTERN matches decodes (the OpenAPI document declares the pattern, so a request
# valid under the schema is never refused); a forged cursor is only a position, and the tenant
# filter still applies.
CURSOR_PATTERN = r"^[0-9]{1,18}-[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def encode_cursor(job: Job) -> str:
    micros = (job.created_at - _EPOCH) // timedelta(microseconds=1)  # UTCDateTime: aware
    return f"{micros}-{job.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise InvalidInput("malformed cursor: pass a page's next_cursor", field="cursor")
    micros, job_id = cursor.split("-")
    created = _EPOCH + timedelta(microseconds=min(int(micros), _LATEST_MICROS))
    return created, uuid.UUID(hex=job_id)


def parse_label_filters(raw: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label filter {item!r} must be key=value", field="label")
        labels[key] = value
    return labels


def list_jobs(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    states: list[JobState],
    labels: list[str],
    cursor: str | None,
    limit: int,
    parent_id: uuid.UUID | None = None,
) -> tuple[list[Job], str | None]:
    rows = repository.list_jobs(
        session,
        tenant_id,
        states=[s.value for s in states],
        labels=parse_label_filters(labels),
        parent_id=parent_id,
        before=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    return page, encode_cursor(page[-1]) if len(rows) > limit else None


def cancel_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Queued jobs stop at once; running ones are flagged and their worker stops at its next
    heartbeat or checkpoint. The flag lives in the database, so it survives worker restarts."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    state = JobState(job.state)
    if state in TERMINAL:
        raise Conflict(f"job is already {state}", code="job_finished")
    stop(session, job.id, JobState(job.state), "cancelled by user")
    # A search's candidates go with it (none can be inserted after this: the search inserts
    # children only in writes fenced on `running`, which a cancel request ends).
    for child in search_repository.children(session, job.id):
        if JobState(child.state) not in TERMINAL:
            stop(session, child.id, JobState(child.state), "cancelled with its search")
    session.flush()
    session.refresh(job)
    return job


def stop(session: Session, job_id: uuid.UUID, state: JobState, message: str) -> None:
    """Queued and waiting jobs end at once; running ones are flagged and their worker stops at
    its next check."""
    if state in (JobState.QUEUED, JobState.WAITING) and repository.transition(
        session, job_id, JobState.CANCELLED, sources=[state], message=message
    ):
        return
    # Running (or claimed since we read it): flag it; its worker stops at the next check.
    repository.transition(
        session,
        job_id,
        JobState.CANCEL_REQUESTED,
        sources=[JobState.RUNNING],
        message=message.replace("cancelled", "cancellation requested"),
    )


def list_events(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, after_id: int, limit: int
) -> tuple[list[JobEvent], int | None]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.list_events(session, job_id, after_id=after_id, limit=limit)
    return rows, rows[-1].id if len(rows) == limit else None


def to_read(
    job: Job, labels: dict[str, str] | None = None, *, queue_position: int | None = None
) -> JobRead:
    """From an ORM job, or from a status row (`labels` given, attributes as columns)."""
    base = f"/v1/jobs/{job.id}"
    error = (
        JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobRead(
        id=job.id,
        kind=job.spec.get("kind") or "compress",
        parent_id=job.parent_id,
        state=JobState(job.state),
        device=job.device,
        queue=job.queue,
        priority=job.priority,
        queue_position=queue_position,
        labels=labels if labels is not None else {lab.key: lab.value for lab in job.labels},
        model=job.spec["model"],
        recipe=job.spec["recipe"],
        stage=job.stage,
        progress=round(job.progress, 2),
        progress_detail=job.progress_detail,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        error=error,
        metrics=job.metrics,
        webhook_url=job.webhook_url,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=JobLinks(
            self=base,
            events=f"{base}/events",
            artifacts=f"{base}/artifacts",
            report=f"{base}/report",
            cancel=f"{base}/cancel",
            children=f"/v1/jobs?parent_id={job.id}" if job.spec.get("kind") == "search" else None,
        ),
    )


def row_to_read(row: dict[str, Any]) -> JobRead:
    """A row of repository.JOB_STATUS_SQL (job columns + `label_map`) as a JobRead."""
    job = SimpleNamespace(**row)
    return to_read(job, row["label_map"], queue_position=row["queue_position"])  # type: ignore[arg-type]


def event_to_read(event: JobEvent) -> EventRead:
    return EventRead.model_validate(event, from_attributes=True)
