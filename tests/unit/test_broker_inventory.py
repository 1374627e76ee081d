"""The reaper's view of the broker (app/broker_inventory.py) on the embedded stack's filesystem
broker: a message sent with the API's own producer is found by its job id, and gone once a
consumer takes it. Redis is covered by tests/faults/test_outages.py."""

from __future__ import annotations

import uuid
from pathlib import Path

from app.broker_inventory import jobs_with_messages
from app.config import Settings
from app.queue import make_celery, send_run_job


def test_filesystem_broker_messages_are_found_by_job(tmp_path: Path) -> None:
    settings = Settings(broker_url="filesystem://", broker_folder=tmp_path / "broker")
    first, second = uuid.uuid4(), uuid.uuid4()
    for job_id in (first, second):
        send_run_job(settings, job_id, queue="cpu", priority=5)
    assert jobs_with_messages(settings, ["cpu"], fresh_s=60) == {first, second}

    with make_celery(settings).connection_for_read() as connection:
        queue = connection.SimpleQueue("cpu")
        queue.get(timeout=5).ack()  # a worker took one message
        queue.close()
    assert len(jobs_with_messages(settings, ["cpu"], fresh_s=60) or ()) == 1


def test_brokers_that_cannot_be_listed_say_so() -> None:
    settings = Settings(broker_url="amqp://guest@127.0.0.1:5672//")
    assert jobs_with_messages(settings, ["cpu"], fresh_s=60) is None
