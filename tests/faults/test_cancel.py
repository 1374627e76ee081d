"""Cancel in every state, also with every worker dead: each reaches `cancelled` within the
bound the README states (a check point in the running job, or lease + reaper when no worker
is left to notice), and nothing runs it afterwards."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.config import Settings
from tests.support.services import wait_until
from tests.support.stack import Stack, bucket_view, fast_job, record, slow_body, stack, summary

pytestmark = pytest.mark.integration
# Cancels per state. CI runs 1 (each state once); the README's table comes from more.
REPEATS = int(os.environ.get("SQUASH_CANCEL_REPEATS", "1"))


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


def test_a_cancelled_job_keeps_no_file_of_a_dead_attempt(
    settings: Settings, tmp_path: Path
) -> None:
    """An attempt killed after its upload (a manifest among its files), the job re-queued by the
    reaper, then cancelled: nothing of it stays in the bucket, also once a worker takes its
    message."""
    with stack(settings, tmp_path) as deployment:
        deployment.start_worker()
        job_id, victim = deployment.hold("before_commit")
        victim.kill()
        deployment.release(job_id)
        # No worker left: the reaper puts the job back in the queue when the lease expires.
        deployment.wait_job(job_id, lambda j: j["state"] == "queued", "re-queued", timeout=60)
        left = bucket_view(deployment.settings.s3_endpoint_url, job_id)
        assert left["manifests"], left  # what the dead attempt published under its prefix

        cancel_and_time(deployment, job_id)
        wait_until(
            lambda: bucket_view(deployment.settings.s3_endpoint_url, job_id)["objects"] == 0,
            timeout=30,
            interval=0.1,
            what="the dead attempt's files to go",
        )
        worker = deployment.start_worker()
        wait_until(
            lambda: "job.not_claimed" in worker.log_path.read_text(errors="replace"),
            timeout=60,
            interval=0.2,
            what="the worker to take the cancelled job's message",
        )
        assert bucket_view(deployment.settings.s3_endpoint_url, job_id) == {
            "manifests": [],
            "attempt_prefixes": [],
            "objects": 0,
            "open_uploads": 0,
        }
        assert deployment.job(job_id)["state"] == "cancelled"


def test_cancel_stops_a_job_inside_a_call_that_never_returns(
    settings: Settings, tmp_path: Path
) -> None:
    """The job's thread is stuck in one call (a fault hold stands in for an hours-long library
    call: no check point runs): its heartbeat ends it within HEARTBEAT_INTERVAL_S +
    CANCEL_GRACE_S, nothing of the attempt is kept, and the worker takes the next job."""
    bound = settings.heartbeat_interval_s + settings.cancel_grace_s
    times = []
    with stack(settings, tmp_path) as deployment:
        deployment.start_worker()
        for point in ("model_load", "compression", "upload"):
            job_id, _ = deployment.hold(point)
            times.append(cancel_and_time(deployment, job_id))
            deployment.release(job_id)
            left = bucket_view(deployment.settings.s3_endpoint_url, job_id)
            wait_until(
                lambda j=job_id: (
                    bucket_view(deployment.settings.s3_endpoint_url, j)["objects"] == 0
                ),
                timeout=30,
                interval=0.1,
                what=f"no file of the attempt stopped at {point} (had {left})",
            )
        after = deployment.submit(fast_job())["id"]
        done = deployment.wait_job(after, lambda j: j["state"] == "succeeded", "the next job")
        assert done["attempts"] == 1
    record(
        "cancel_inside_a_call",
        {"bound_s": bound, "phases": ["model_load", "compression", "upload"], **summary(times)},
    )
    assert max(times) < bound, times
