"""The only Celery producer. Messages carry the job id and nothing else; Postgres has the rest.

The API sends by task *name* so it never imports `workers` (and through it, torch).
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from app.config import Settings

RUN_JOB_TASK = "squash.run_job"
# kombu's Redis transport keeps one list per queue and priority step, named `queue` (step 0)
# and `queue<SEP><step>` (app/broker_inventory.py reads them).
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"


def pool_queues(settings: Settings) -> list[str]:
    """Every worker pool's queue (WORKER_POOLS); a worker consumes one or more of them."""
    return [pool.queue for pool in settings.worker_pools]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem"):
        folder = Path(settings.broker_folder)
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    options: dict[str, Any] = {
        # Redis redelivers an unacked message after this; it must outlast the longest job, or a
        # running job's message would be handed to a second worker. Lost workers are found by
        # their lease instead (see app/jobs/reaper.py).
        "visibility_timeout": int(settings.max_job_runtime_s * 2),
        "priority_steps": PRIORITY_STEPS,
        "sep": PRIORITY_SEP,
        "queue_order_strategy": "priority",
    }
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def make_celery(settings: Settings, name: str = "squash") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # JSON only: a worker that accepted pickle would run code from anyone who can write to
        # Redis. The message is a job id anyway.
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=pool_queues(settings)[-1],
    )
    return app


@lru_cache(maxsize=4)
def _producer(settings: Settings) -> Celery:
    return make_celery(settings, name="squash-producer")


def send_run_job(settings: Settings, job_id: uuid.UUID, *, queue: str, priority: int) -> None:
    """Publish after the job row committed. Failure here loses nothing: the reaper re-sends."""
    _producer(settings).send_task(
        RUN_JOB_TASK,
        args=[str(job_id)],
        queue=queue,
        # kombu's Redis priorities: 0 is served first; the API's 9 is the most urgent.
        priority=9 - priority,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def ping_broker(settings: Settings, timeout: float = 2.0) -> None:
    with _producer(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
