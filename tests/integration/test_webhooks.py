"""Signed webhooks from the outbox, against a real HTTP receiver, a real worker and Postgres."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.webhooks.signing import verify
from tests.support.jobs import tiny_job, wait_for_state
from tests.support.services import WorkerProcess, free_port, wait_until


@dataclass
class Receiver:
    """Answers 500 to the first `failures` attempts of every delivery, then 204."""

    failures: int
    url: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            delivery = headers.get("squash-webhook-id", "")
            earlier = sum(1 for a in self.attempts if a["id"] == delivery)
            status = 500 if earlier < self.failures else 204
            self.attempts.append(
                {"id": delivery, "headers": headers, "body": body, "status": status}
            )
            return status

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.attempts if a["status"] == 204]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(failures=2)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    server.shutdown()
    server.server_close()


def test_every_state_change_is_delivered_once_signed_after_two_failures(
    api: TestClient, tenant_a: dict[str, str], worker: WorkerProcess, receiver: Receiver
) -> None:
    secret = api.get("/v1/webhooks/secret", headers=tenant_a).json()["secret"]
    response = api.post("/v1/jobs", json=tiny_job(webhook_url=receiver.url), headers=tenant_a)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["webhook_url"] == receiver.url
    assert wait_for_state(api, tenant_a, job_id, worker=worker)["state"] == "succeeded"

    states = ["queued", "running", "succeeded"]
    wait_until(lambda: len(receiver.accepted()) >= len(states), timeout=30, what="3 deliveries")
    time.sleep(1.0)  # ten dispatcher rounds: room for a duplicate to show up
    accepted = receiver.accepted()
    bodies = [json.loads(a["body"]) for a in accepted]
    # Exactly one accepted delivery per state change, each its own event.
    assert sorted(b["job"]["state"] for b in bodies) == sorted(states)
    assert len({b["id"] for b in bodies}) == len({b["sequence"] for b in bodies}) == len(states)
    assert all(b["job"]["id"] == job_id and b["type"] == "job.state_changed" for b in bodies)
    # Each was refused twice first, with the same delivery id, then accepted.
    per_delivery = Counter(a["id"] for a in receiver.attempts)
    assert set(per_delivery.values()) == {3}, per_delivery
    # Every attempt is signed with the tenant's secret over its timestamp and raw body.
    for attempt in receiver.attempts:
        headers = attempt["headers"]
        assert verify(
            secret,
            timestamp=headers["squash-webhook-timestamp"],
            signature=headers["squash-signature"],
            body=attempt["body"],
        )
        assert not verify(
            "whsec_wrong",
            timestamp=headers["squash-webhook-timestamp"],
            signature=headers["squash-signature"],
            body=attempt["body"],
        )
    # The job's events list every attempt.
    wait_until(
        lambda: (
            sum(
                "delivered" in e["message"]
                for e in api.get(f"/v1/jobs/{job_id}/events", headers=tenant_a).json()["items"]
                if e["kind"] == "webhook"
            )
            == len(states)
        ),
        timeout=10,
        what="webhook events",
    )
    events = api.get(f"/v1/jobs/{job_id}/events", headers=tenant_a).json()["items"]
    webhook_events = [e for e in events if e["kind"] == "webhook"]
    assert len(webhook_events) == 3 * len(states)
    assert sum("attempt" in e["message"] and "failed" in e["message"] for e in webhook_events) == 6


def test_no_webhook_no_delivery_and_cancel_is_delivered(
    api: TestClient, tenant_a: dict[str, str], receiver: Receiver
) -> None:
    plain = api.post("/v1/jobs", json=tiny_job(device="gpu"), headers=tenant_a).json()
    hooked = api.post(
        "/v1/jobs", json=tiny_job(device="gpu", webhook_url=receiver.url), headers=tenant_a
    ).json()
    for job in (plain, hooked):
        assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant_a).status_code == 202
    wait_until(lambda: len(receiver.accepted()) >= 2, timeout=30, what="2 deliveries")
    bodies = [json.loads(a["body"]) for a in receiver.accepted()]
    assert {b["job"]["id"] for b in bodies} == {hooked["id"]}
    assert sorted(b["job"]["state"] for b in bodies) == ["cancelled", "queued"]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        # Well-formed, but not a public address: this deployment will not deliver there.
        ("https://169.254.169.254/latest/meta-data/", 403, "webhook_not_allowed"),
        ("https://10.0.0.5/hook", 403, "webhook_not_allowed"),
        ("https://localhost/hook", 403, "webhook_not_allowed"),
        ("https://[::1]/hook", 403, "webhook_not_allowed"),
        # Not a URL Squash delivers to at all.
        ("http://93.184.216.34/hook", 422, "invalid_webhook_url"),
        ("https://user:secret@93.184.216.34/hook", 422, "invalid_webhook_url"),
    ],
)
def test_private_or_plain_http_webhooks_are_refused_at_submission(
    api: TestClient, tenant_a: dict[str, str], url: str, status: int, code: str
) -> None:
    before = api.get("/v1/jobs", headers=tenant_a).json()["items"]
    response = api.post("/v1/jobs", json=tiny_job(device="gpu", webhook_url=url), headers=tenant_a)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code
    assert problem["errors"][0]["field"] == "webhook_url"
    assert api.get("/v1/jobs", headers=tenant_a).json()["items"] == before


def test_secret_is_per_tenant_and_rotates(
    api: TestClient, tenant_a: dict[str, str], tenant_b: dict[str, str]
) -> None:
    a = api.get("/v1/webhooks/secret", headers=tenant_a).json()["secret"]
    b = api.get("/v1/webhooks/secret", headers=tenant_b).json()["secret"]
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b
    assert api.get("/v1/webhooks/secret", headers=tenant_a).json()["secret"] == a
    rotated = api.post("/v1/webhooks/secret/rotate", headers=tenant_b).json()["secret"]
    assert rotated != b
    assert api.get("/v1/webhooks/secret", headers=tenant_b).json()["secret"] == rotated
    assert api.get("/v1/webhooks/secret").status_code == 401
