"""Celery configured for hours-long GPU jobs (see ARCHITECTURE.md, "Celery is tuned…")."""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery.signals import worker_init, worker_ready
from kombu import Queue

from app.config import get_settings
from app.db import get_engine, set_connection_budget
from app.logging import configure_logging
from app.queue import make_celery, pool_queues
from workers.metrics import prepare as prepare_metrics
from workers.metrics import serve as serve_metrics
from workers.preload import preloads_ml_stack

settings = get_settings()
prepare_metrics(settings)  # before anything imports prometheus_client (workers/metrics.py)
configure_logging(settings.log_level, settings.log_json)
set_connection_budget(settings.db_connections_per_process)

celery_app = make_celery(settings, name="squash-worker")
celery_app.conf.update(
    # Ack after the task returns, and give the message back if the worker process dies, so a
    # crash never silently drops a job (the lease makes the re-run safe).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One job at a time per process, and a fresh process per job: llm-compressor keeps
    # process-global state and CUDA memory fragments.
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=1,
    # A broker outage leaves running jobs running: their lease, heartbeats, progress and cancel
    # flag live in Postgres, not in the broker, and the lease fences any second delivery of the
    # message (its claim is a no-op). Cancelling them instead made every Redis blip kill every
    # running job and spend one of its attempts (hours of GPU time each).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
    task_queues=[Queue(name) for name in pool_queues(settings)],
    imports=["workers.tasks"],
)


@worker_ready.connect
def sweep_scratch_on_start(**_: object) -> None:
    """A worker that starts after a crash frees what the killed attempts left on this machine
    (workers/scratch.py), without waiting for its first job."""
    from workers.scratch import sweep_quietly

    serve_metrics(settings)
    try:
        sweep_quietly(settings)
    finally:
        # This is the pool's parent: job processes are forked from it later and must not
        # inherit (and share) its database connection.
        get_engine(settings.database_url).dispose()


@worker_init.connect
def preload_ml_stack(sender: Any, **_: object) -> None:
    consumed = list(sender.app.amqp.queues.consume_from)
    if not preloads_ml_stack(settings, consumed):
        return
    started = time.perf_counter()
    import workers.job.execute  # noqa: F401 - the job's whole import graph

    seconds = round(time.perf_counter() - started, 1)
    structlog.get_logger().info("worker.preloaded_ml_stack", queues=consumed, seconds=seconds)
