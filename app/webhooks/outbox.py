"""Writing to the outbox, inside the transaction that changes a job's state."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.webhooks.models import WebhookDelivery


def enqueue_state_change(session: Session, job_id: uuid.UUID, event_id: int) -> None:
    """Queue a delivery of this state event if the job named a webhook."""
    url = session.scalar(select(Job.webhook_url).where(Job.id == job_id))
    if url:
        session.add(WebhookDelivery(job_id=job_id, event_id=event_id, url=url))
