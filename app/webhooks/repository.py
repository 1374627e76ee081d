"""The webhook outbox table: deliveries written with a job's state change, taken when due."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Job, JobEvent
from app.webhooks.models import WebhookDelivery


@dataclass(frozen=True)
class DueJob:
    """The columns of a delivery's job that a delivery needs (not the ORM Job: its labels are
    eagerly joined, which FOR UPDATE cannot lock)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    error_code: str | None
    error_message: str | None


def add_delivery(session: Session, job_id: uuid.UUID, event_id: int) -> None:
    """Queue a delivery of this state event if the job named a webhook (inside the transaction
    that changes the state: a change is never committed without its delivery)."""
    url = session.scalar(select(Job.webhook_url).where(Job.id == job_id))
    if url:
        session.add(WebhookDelivery(job_id=job_id, event_id=event_id, url=url))


def take_due(session: Session) -> tuple[WebhookDelivery, JobEvent, DueJob] | None:
    """The most overdue pending delivery, locked for this transaction (others skip it)."""
    row = session.execute(
        select(WebhookDelivery, JobEvent, Job.id, Job.tenant_id, Job.error_code, Job.error_message)
        .join(JobEvent, JobEvent.id == WebhookDelivery.event_id)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= utcnow())
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.event_id)
        .limit(1)
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).one_or_none()
    return None if row is None else (row[0], row[1], DueJob(*row[2:]))
