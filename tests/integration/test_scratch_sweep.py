"""Scratch folders of dead attempts go when a worker starts or claims a job; a folder whose job
is still leased at its generation (an attempt that may be alive) stays (real Postgres)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.auth import repository as auth_repository
from app.auth import service as auth_service
from app.config import Settings
from app.db import session_scope
from app.jobs import repository
from app.jobs.dispatch import requeue
from app.jobs.models import Job
from app.jobs.state import JobState
from workers.scratch import scratch_dir, sweep_scratch

pytestmark = pytest.mark.integration


def new_job(database_url: str) -> uuid.UUID:
    with session_scope(database_url) as session:
        name = f"sweep-{uuid.uuid4().hex[:8]}"
        auth_service.create_key(session, tenant_name=name)
        tenant = auth_repository.get_tenant_by_name(session, name)
        assert tenant is not None
        job = Job(
            tenant_id=tenant.id,
            state=JobState.QUEUED.value,
            device="cpu",
            queue="cpu",
            spec={},
            request_hash="x",
            max_attempts=3,
        )
        repository.insert_job(session, job, {})
        return job.id


def fill(folder: Path, size: int) -> None:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"\0" * size)


def test_sweep_removes_what_no_live_attempt_owns(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"work_dir": tmp_path / "work"})
    running, finished = new_job(settings.database_url), new_job(settings.database_url)
    with session_scope(settings.database_url) as session:
        # `running`: its first attempt died (the reaper re-queued it), the second runs.
        assert repository.claim(session, running, worker_id="w", lease_ttl_s=60) == 1
        assert requeue(session, running, generation=1, message="lease expired")
        assert repository.claim(session, running, worker_id="w", lease_ttl_s=60) == 2
        assert repository.claim(session, finished, worker_id="w", lease_ttl_s=60) == 1
        repository.transition(
            session, finished, JobState.SUCCEEDED, sources=[JobState.RUNNING], generation=1
        )
    dead_attempt = scratch_dir(local, running, 1)
    live_attempt = scratch_dir(local, running, 2)
    finished_attempt = scratch_dir(local, finished, 1)
    unknown_job = scratch_dir(local, uuid.uuid4(), 1)
    not_ours = Path(local.work_dir) / "jobs" / "notes"
    for folder in (dead_attempt, live_attempt, finished_attempt, unknown_job, not_ours):
        fill(folder, 1000)

    swept = sweep_scratch(local)

    assert swept == {"folders": 3, "bytes": 3000}
    assert live_attempt.is_dir() and not_ours.is_dir()
    assert not dead_attempt.exists() and not finished_attempt.exists() and not unknown_job.exists()
    assert sweep_scratch(local) == {"folders": 0, "bytes": 0}
