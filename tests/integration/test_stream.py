"""Live progress over Server-Sent Events, against a real API process and worker: a client that
connects mid-job receives every later event in order, and one that reconnects with
Last-Event-ID (as every EventSource does) resumes with no event lost or repeated."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.client import sse_messages
from tests.support.services import WorkerProcess
from tests.support.stack import fast_job

pytestmark = pytest.mark.integration


def test_a_client_that_reconnects_misses_nothing_and_sees_nothing_twice(
    api_url: str,
    make_key: Callable[..., str],
    worker: WorkerProcess,
    tiny_model_dir: Path,
) -> None:
    client = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {make_key()}"}, timeout=60
    )
    job = client.post("/v1/jobs", json=fast_job()).json()
    first = client.get(f"/v1/jobs/{job['id']}/events").json()["items"][0]["id"]
    stream = f"/v1/jobs/{job['id']}/stream"

    received: list[int] = []
    progress: list[dict[str, Any]] = []
    # Mid-job: start after the first event, take two, then drop the connection.
    with client.stream("GET", stream, params={"after": first}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for msg in sse_messages(response.iter_lines()):
            if msg["event"] == "progress":
                progress.append(json.loads(msg["data"]))
            elif msg["event"] == "job_event":
                assert int(msg["id"]) == json.loads(msg["data"])["id"]
                received.append(int(msg["id"]))
                if len(received) == 2:
                    break
    assert len(received) == 2, worker.tail()
    # Reconnect as an EventSource does: Last-Event-ID wins over the `after` it first used.
    with client.stream(
        "GET", stream, params={"after": first}, headers={"Last-Event-ID": str(received[-1])}
    ) as response:
        ended = None
        for msg in sse_messages(response.iter_lines()):
            if msg["event"] == "job_event":
                received.append(int(msg["id"]))
            elif msg["event"] == "progress":
                progress.append(json.loads(msg["data"]))
            elif msg["event"] == "end":
                ended = json.loads(msg["data"])["state"]
    assert ended == "succeeded", worker.tail()

    history = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()["items"]
    expected = [event["id"] for event in history if event["id"] > first]
    assert received == expected  # every later event, in order, none twice
    assert progress[0]["state"] in ("queued", "running") and progress[-1]["state"] == "succeeded"

    missing = client.get(f"/v1/jobs/{uuid.uuid4()}/stream")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
