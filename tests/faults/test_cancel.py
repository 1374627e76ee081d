"""Cancel in every state, also with every worker dead: each reaches `cancelled` within the
bound the README states (a check point in the running job, or lease + reaper when no worker
is left to notice), and nothing runs it afterwards."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.stack import Stack, fast_job, record, stack, summary

pytestmark = pytest.mark.integration
REPEATS = int(os.environ.get("SQUASH_CANCEL_REPEATS", "3"))


def slow_body() -> dict[str, Any]:
    """Evaluation of the original over 40k tokens at stride 1: minutes of per-window checks."""
    body = fast_job()
    body["evaluation"] |= {"max_tokens": 40000, "context_length": 32, "stride": 1}
    body["evaluation"]["compare_original"] = True
    return body


def cancel_and_time(deployment: Stack, job_id: str) -> float:
    started = time.monotonic()
    response = deployment.client.post(f"/v1/jobs/{job_id}/cancel", headers=deployment.headers)
    assert response.status_code == 202 or response.status_code == 200, response.text
    deployment.wait_job(job_id, lambda j: j["state"] == "cancelled", "cancelled", timeout=60)
    return time.monotonic() - started


def test_cancel_reaches_cancelled_in_every_state(settings: Settings, tmp_path: Path) -> None:
    times: dict[str, list[float]] = {"queued": [], "running": [], "running_worker_dead": []}
    with stack(settings, tmp_path) as deployment:
        for _ in range(REPEATS):
            # Queued: parked on the gpu queue, which no worker here reads.
            job_id = deployment.submit(fast_job(device="gpu"))["id"]
            times["queued"].append(cancel_and_time(deployment, job_id))

        worker = deployment.start_worker()
        for _ in range(REPEATS):
            job_id = deployment.submit(slow_body())["id"]
            deployment.wait_job(job_id, lambda j: j["stage"] == "evaluate_original", "running")
            times["running"].append(cancel_and_time(deployment, job_id))

        for _ in range(REPEATS):
            job_id = deployment.submit(slow_body())["id"]
            deployment.wait_job(job_id, lambda j: j["stage"] == "evaluate_original", "running")
            worker.kill()  # every worker is gone: the flag waits in the database
            times["running_worker_dead"].append(cancel_and_time(deployment, job_id))
            worker = deployment.start_worker()
        # A restarted worker never runs a cancelled job; its message (if redelivered) is a no-op.
        time.sleep(2)
        assert deployment.job(job_id)["state"] == "cancelled"
        assert deployment.job(job_id)["attempts"] == 1

        finished = deployment.client.post(f"/v1/jobs/{job_id}/cancel", headers=deployment.headers)
        assert finished.status_code == 409 and finished.json()["code"] == "job_finished"

    figures = {state: summary(values) for state, values in times.items()}
    bound = {
        "running": settings.heartbeat_interval_s + 5,  # next check point (a window) + write
        "running_worker_dead": settings.lease_ttl_s + 2 * settings.reaper_interval_s + 1,
    }
    record("cancel_every_state", {**figures, "bounds_s": bound})
    assert max(times["queued"]) < 2
    assert max(times["running"]) < bound["running"], figures
    assert max(times["running_worker_dead"]) < bound["running_worker_dead"], figures
