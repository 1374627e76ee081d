"""Delivering the outbox: at least once, signed, retried with backoff, until a 2xx or expiry.

Each delivery is taken with `FOR UPDATE SKIP LOCKED` and finished in its own transaction, so
any number of API processes dispatch side by side without sending one delivery twice at once;
a process that dies mid-send leaves the row pending and it is sent again (receivers dedupe on
`Squash-Webhook-Id`). Deliveries of one job are not ordered against each other once a retry
intervenes: the payload carries `sequence` (the event id) and the time of the change.
Every attempt is listed in the job's events (kind `webhook`).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import httpx
import structlog

from app.background import PeriodicThread
from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs.models import JobEvent
from app.jobs.repository import add_event
from app.webhooks import repository
from app.webhooks.models import WebhookDelivery
from app.webhooks.repository import DueJob
from app.webhooks.secrets import get_or_create_secret
from app.webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from app.webhooks.urls import UnsafeWebhookUrl, pinned

log = structlog.get_logger()
EVENT_TYPE = "job.state_changed"


def payload(delivery: WebhookDelivery, event: JobEvent, job: DueJob, settings: Settings) -> bytes:
    body: dict[str, Any] = {
        "id": str(delivery.id),
        "type": EVENT_TYPE,
        "sequence": event.id,
        "occurred_at": event.created_at.isoformat(),
        "job": {
            "id": str(job.id),
            "state": event.state,
            "message": event.message,
            "url": f"{settings.public_base_url.rstrip('/')}/v1/jobs/{job.id}",
        },
    }
    if event.state == "failed":
        body["job"]["error"] = {"code": job.error_code, "message": job.error_message}
    return json.dumps(body, separators=(",", ":")).encode()


def backoff_s(settings: Settings, attempts: int) -> float:
    delay = settings.webhook_retry_base_s * 2.0 ** (attempts - 1)
    return min(delay, settings.webhook_retry_max_s)


def _send(
    client: httpx.Client, settings: Settings, url: str, secret: str, delivery_id: str, body: bytes
) -> tuple[int | None, str | None]:
    """(HTTP status, error) of one attempt."""
    try:
        target = pinned(url, allowed_hosts=settings.webhook_allowed_hosts)
    except UnsafeWebhookUrl as error:
        return None, f"refused: {error}"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Squash-Webhooks/1",
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    extensions = {}
    if target.host_header:
        headers["Host"] = target.host_header
        extensions["sni_hostname"] = target.sni_hostname
    try:
        response = client.post(target.url, content=body, headers=headers, extensions=extensions)
    except Exception as error:  # noqa: BLE001 - any failure is a failed attempt, retried later;
        # raising here would leave this row first in line forever and block every other delivery.
        return None, f"{type(error).__name__}: {error}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def deliver_one(settings: Settings, client: httpx.Client) -> bool:
    """Attempt the most overdue delivery; False when none is due."""
    with session_scope(settings.database_url) as session:
        taken = repository.take_due(session)
        if taken is None:
            return False
        delivery, event, job = taken
        what = f"webhook for '{event.state}'"
        if utcnow() - delivery.created_at > timedelta(seconds=settings.webhook_max_age_s):
            delivery.state = "expired"
            add_event(
                session,
                job.id,
                "webhook",
                f"{what} expired after {delivery.attempts} attempts ({delivery.last_error})",
                data={"delivery_id": str(delivery.id), "attempts": delivery.attempts},
            )
            return True
        secret = get_or_create_secret(session, job.tenant_id)
        status, error = _send(
            client,
            settings,
            delivery.url,
            secret,
            str(delivery.id),
            payload(delivery, event, job, settings),
        )
        delivery.attempts += 1
        delivery.last_status = status
        delivery.last_error = error
        data = {"delivery_id": str(delivery.id), "attempt": delivery.attempts, "status": status}
        if error is None:
            delivery.state = "delivered"
            delivery.delivered_at = utcnow()
            message = f"{what} delivered (HTTP {status}, attempt {delivery.attempts})"
        else:
            delay = backoff_s(settings, delivery.attempts)
            delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
            message = (
                f"{what}: attempt {delivery.attempts} failed ({error}); retry in {delay:.0f} s"
            )
        add_event(session, job.id, "webhook", message, data=data)
        return True


def deliver_due(settings: Settings, client: httpx.Client) -> None:
    while deliver_one(settings, client):
        pass


def dispatcher_thread(settings: Settings) -> PeriodicThread:
    # No redirects: a 3xx could point anywhere, past the address checks.
    client = httpx.Client(follow_redirects=False, timeout=settings.webhook_timeout_s)
    return PeriodicThread(
        "squash-webhooks",
        settings.webhook_poll_interval_s,
        lambda: deliver_due(settings, client),
        on_exit=client.close,
    )
