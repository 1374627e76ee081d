"""One home for (re)queueing: a job that goes back to `queued` (the worker's retry after a
transient failure, or the reaper after a lost lease) shows a fresh stage and progress, no
worker, and a message sent again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs import repository
from app.jobs.models import Job
from app.jobs.reaper import reap_once
from tests.support.jobs import tiny_job
from workers.context import JobContext
from workers.runner import _retry_or_fail


def _retry_after_transient_failure(settings: Settings, job_id: uuid.UUID, generation: int) -> None:
    _retry_or_fail(settings, JobContext(job_id, generation, settings), 1, 3, "store hiccup")


def _reaper_after_lost_lease(settings: Settings, job_id: uuid.UUID, generation: int) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert reap_once(settings)["requeued"] >= 1


@pytest.mark.integration
@pytest.mark.parametrize(
    "send_back", [_retry_after_transient_failure, _reaper_after_lost_lease], ids=["retry", "reaper"]
)
def test_a_requeued_job_shows_a_fresh_stage_and_progress(
    api: TestClient,
    settings: Settings,
    tenant_a: dict[str, str],
    send_back: Callable[[Settings, uuid.UUID, int], None],
) -> None:
    # device "gpu": no worker consumes that queue here, so nothing else claims the job.
    created = api.post("/v1/jobs", json=tiny_job(device="gpu"), headers=tenant_a).json()
    job_id = uuid.UUID(created["id"])
    with session_scope(settings.database_url) as session:
        generation = repository.claim(session, job_id, worker_id="test:1", lease_ttl_s=60)
        assert generation is not None
        repository.set_progress(
            session,
            job_id,
            generation=generation,
            stage="evaluate_compressed",
            progress=87.5,
            detail={"window": 3, "windows": 4},
        )
        first_sent = repository.get_job(session, job_id).enqueued_at
    running = api.get(f"/v1/jobs/{job_id}", headers=tenant_a).json()
    assert (running["state"], running["stage"], running["progress"]) == (
        "running",
        "evaluate_compressed",
        87.5,
    )

    send_back(settings, job_id, generation)

    job = api.get(f"/v1/jobs/{job_id}", headers=tenant_a).json()
    assert job["state"] == "queued"
    assert job["stage"] is None
    assert job["progress"] == 0.0
    assert job["progress_detail"] is None
    with session_scope(settings.database_url) as session:
        row = repository.get_job(session, job_id)
        assert row.worker_id is None and row.lease_expires_at is None
        # Sent again and marked: the reaper will not send it a second time.
        assert row.enqueued_at is not None and row.enqueued_at > first_sent
