"""Workers die (SIGKILL) or freeze (SIGSTOP) in every phase of a job: no job is lost, none
publishes twice, and a frozen worker that wakes up after its lease changes nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.services import WorkerProcess, wait_until
from tests.support.stack import Stack, bucket_view, record, scratch_bytes, stack, summary
from workers.faults import BEFORE_CLAIM, POINTS

pytestmark = pytest.mark.integration

# Kills per phase. CI runs 1 (4 kills, one in every phase, ~1 minute); the README's table comes
# from SQUASH_FAULT_REPEATS=10.
REPEATS = int(os.environ.get("SQUASH_FAULT_REPEATS", "1"))
TERMINAL = ("succeeded", "failed", "cancelled")


def published_state(stack: Stack, job_id: str) -> dict[str, Any]:
    """What the bucket and the API say was published for a job."""
    events = stack.events(job_id)
    artifacts = stack.client.get(f"/v1/jobs/{job_id}/artifacts", headers=stack.headers).json()
    return {
        **bucket_view(stack.settings.s3_endpoint_url, job_id),
        "succeeded_events": sum(
            1 for e in events if e["kind"] == "state" and e["state"] == "succeeded"
        ),
        # Presigned URLs differ per call: compare what they point at.
        "artifacts": [
            {k: v for k, v in item.items() if k not in ("url", "url_expires_at")}
            for item in artifacts.get("items", [])
        ],
    }


def crash_once(stack: Stack, point: str) -> tuple[float, float, dict[str, Any], dict[str, Any]]:
    job_id, victim = stack.hold(point)
    victim.kill()
    killed = time.monotonic()
    stack.release(job_id)
    stack.start_worker()  # the crashed machine comes back
    stack.wait_job(job_id, lambda j: j["attempts"] == 2, "the job to be claimed again", 60)
    reclaimed = time.monotonic() - killed
    done = stack.wait_job(job_id, lambda j: j["state"] in TERMINAL, "the retry to finish")
    return reclaimed, time.monotonic() - killed, done, published_state(stack, job_id)


def test_sigkill_in_every_phase_loses_nothing_and_publishes_once(
    settings: Settings, tmp_path: Path
) -> None:
    reclaim: dict[str, list[float]] = {point: [] for point in POINTS}
    finish: dict[str, list[float]] = {point: [] for point in POINTS}
    lost = duplicates = 0
    with stack(settings, tmp_path) as deployment:
        deployment.start_worker()
        deployment.start_worker()
        for _ in range(REPEATS):
            for point in POINTS:
                reclaimed, finished, done, published = crash_once(deployment, point)
                # The killed attempt's scratch folder went when the retry was claimed.
                assert scratch_bytes(deployment.settings) == 0, point
                reclaim[point].append(reclaimed)
                finish[point].append(finished)
                lost += done["state"] != "succeeded"
                # One publication: the winning attempt's files only, one manifest, one
                # `succeeded`, no half-finished upload left behind.
                duplicates += len(published["manifests"]) - 1 + published["succeeded_events"] - 1
                assert published["attempt_prefixes"] == ["2"], (point, published)
                assert published["open_uploads"] == 0
                assert {i["path"] for i in published["artifacts"]} >= {
                    "model/model.safetensors",
                    "report.json",
                }
    figures = {
        "scratch_bytes_left": scratch_bytes(deployment.settings),
        "repeats_per_phase": REPEATS,
        "lease_ttl_s": settings.lease_ttl_s,
        "reaper_interval_s": settings.reaper_interval_s,
        "lost_jobs": lost,
        "duplicate_publishes": duplicates,
        "kill_to_reclaimed": {point: summary(values) for point, values in reclaim.items()},
        "kill_to_succeeded": {point: summary(values) for point, values in finish.items()},
    }
    record("sigkill_every_phase", figures)
    assert lost == 0 and duplicates == 0
    bound = settings.lease_ttl_s + 2 * settings.reaper_interval_s + 1
    assert all(max(values) < bound for values in reclaim.values()), figures


def stale_notices(worker: WorkerProcess) -> int:
    """How often this worker's log says an attempt found its lease gone (at a check point, or
    when its final commit was refused)."""
    text = worker.log_path.read_text(errors="replace")
    return text.count("job.lease_lost") + text.count("applied=False")


def freeze_once(stack: Stack, point: str) -> bool:
    """SIGSTOP the worker held at `point` until another worker finished the job, then SIGCONT.
    True if anything the stale attempt did afterwards changed the job, its events or files."""
    job_id, frozen = stack.hold(point)
    # This worker may have noticed an earlier attempt's loss: wait for one more notice.
    noticed = stale_notices(frozen)
    os.killpg(frozen.proc.pid, signal.SIGSTOP)
    done = stack.wait_job(job_id, lambda j: j["state"] == "succeeded", "the other worker")
    before = (done, published_state(stack, job_id), stack.events(job_id))
    stack.release(job_id)
    os.killpg(frozen.proc.pid, signal.SIGCONT)
    # The woken attempt runs on from its phase: its next fenced write is refused (a progress
    # write or its finish) and it deletes its own files.
    wait_until(
        lambda: stale_notices(frozen) > noticed, timeout=60, what="the stale attempt to notice"
    )
    time.sleep(1.0)
    after = (stack.job(job_id), published_state(stack, job_id), stack.events(job_id))
    assert after[1]["attempt_prefixes"] == ["2"], after[1]
    parts = zip(("job", "files", "events"), before, after, strict=True)
    changed = [name for name, was, now in parts if was != now]
    if changed:
        print(point, "changed:", changed, before, after)  # noqa: T201 - shown on failure
    return bool(changed)


def test_frozen_worker_past_its_lease_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    woken = accepted = 0
    with stack(settings, tmp_path) as deployment:
        deployment.start_worker()
        deployment.start_worker()
        for point in ("compression", "upload", "before_commit"):
            accepted += freeze_once(deployment, point)
            woken += 1
    record("sigstop_past_lease", {"stale_attempts_woken": woken, "stale_writes_accepted": accepted})
    assert accepted == 0


def test_a_worker_killed_between_delivery_and_claim_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """The message is taken, the job not yet claimed (no lease, no attempt) when the worker
    dies. Killed with its whole worker, the message is stranded in the dead consumer's unacked
    set: the reaper finds it stale after REQUEUE_AFTER_S and sends it again. Killed in its job
    process only, Celery gives the message back at once. Either way the job runs on its first
    attempt and publishes once."""
    figures = {}
    with stack(settings, tmp_path, requeue_after_s=3.0) as deployment:
        deployment.start_worker()
        for whole in (True, False):
            job_id, victim = deployment.hold(BEFORE_CLAIM)
            killed = time.monotonic()
            if whole:
                victim.kill()
                deployment.start_worker()
            else:
                os.kill(deployment.held(job_id)["pid"], signal.SIGKILL)
            deployment.release(job_id)
            done = deployment.wait_job(job_id, lambda j: j["state"] in TERMINAL, "the job", 120)
            style = "worker" if whole else "job_process"
            figures[f"{style}_killed_to_succeeded_s"] = round(time.monotonic() - killed, 1)
            assert done["state"] == "succeeded" and done["attempts"] == 1, done
            assert len(bucket_view(deployment.settings.s3_endpoint_url, job_id)["manifests"]) == 1
    record("sigkill_before_claim", figures)
