from __future__ import annotations

import contextvars
import os
import socket
import uuid

from app.queue import RUN_JOB_TASK
from workers.celery_app import celery_app, settings


@celery_app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> None:
    """Claim → run → finish. The message is only a job id; the job row holds everything else."""
    from workers.runner import run  # heavy imports (torch) only inside the job's process

    # A fresh context per job: what one job sets (e.g. remote-code trust, workers/formats/
    # loader.py) is gone before the next job runs in this process.
    contextvars.copy_context().run(
        run, uuid.UUID(job_id), settings, worker_id=f"{socket.gethostname()}:{os.getpid()}"
    )
