"""Which jobs have a message waiting in the broker, so the reaper re-sends only messages that
are really gone (FLUSHALL, a Redis restart without persistence, a worker killed between taking a
message and claiming its job) instead of every job that has waited long: under load the age rule
multiplied a backlog (325 re-sends for 44 jobs in the chaos run).

A message is present when it sits in one of the pools' queues (kombu's Redis transport keeps one
list per queue and priority) or was handed to a worker less than `fresh_s` ago (kombu's
`unacked` hash and its delivery-time index): a worker claims a job seconds after it takes the
message (it holds one message at a time: prefetch 1 with late acks), so a delivery older than
that whose job is still queued belongs to a worker that died before claiming. The filesystem
broker of the embedded stack keeps one file per waiting message and deletes it on delivery.
Other brokers (RabbitMQ) cannot be listed without consuming: `None`, and the reaper falls back
to re-sending by age.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from app.config import Settings
from app.queue import PRIORITY_SEP, PRIORITY_STEPS

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def job_of(raw: bytes | str) -> uuid.UUID | None:
    """The job id a run_job message carries (its only argument)."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # an `unacked` entry: [message, exchange, routing key]
            message = message[0]
        found = UUID_RE.search(str(message.get("headers", {}).get("argsrepr", "")))
        if found is None:
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            found = UUID_RE.search(str(json.loads(body)[0]))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return uuid.UUID(found.group(0)) if found else None


def jobs_with_messages(
    settings: Settings, queues: list[str], *, fresh_s: float
) -> set[uuid.UUID] | None:
    """Jobs whose message is waiting or was just delivered; None if this broker cannot be
    listed. Raises when the broker is unreachable (then nothing can be sent either)."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _redis(settings, queues, fresh_s)
    if url.startswith("filesystem"):
        return {job for f in _waiting_files(settings) if (job := job_of(_read(f))) is not None}
    return None


def _priority_lists(prefix: str, queue: str) -> list[str]:
    """kombu's Redis transport keeps one list per queue and priority step."""
    return [prefix + (f"{queue}{PRIORITY_SEP}{step}" if step else queue) for step in PRIORITY_STEPS]


def _waiting_files(settings: Settings) -> list[Path]:
    """The filesystem broker's waiting messages (one file each, deleted on delivery)."""
    folder = Path(settings.broker_folder) / "queue"
    return list(folder.glob("*.msg")) if folder.is_dir() else []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # delivered meanwhile
        return b""


def _redis(settings: Settings, queues: list[str], fresh_s: float) -> set[uuid.UUID]:
    import redis

    prefix = settings.broker_key_prefix
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in _priority_lists(prefix, queue):
                pipe.lrange(key, 0, -1)
        pipe.zrangebyscore(prefix + "unacked_index", time.time() - fresh_s, "+inf")
        *lists, fresh_tags = pipe.execute()
        raw = [item for items in lists for item in items]
        if fresh_tags:
            raw += [m for m in client.hmget(prefix + "unacked", fresh_tags) if m is not None]
    finally:
        client.close()
    return {job for item in raw if (job := job_of(item)) is not None}


def waiting_messages(settings: Settings, queues: list[str]) -> dict[str, int] | None:
    """Messages waiting per queue (every priority level counted); None if this broker cannot
    be listed."""
    url = settings.broker_url
    if url.startswith("filesystem"):
        # The filesystem transport keeps one folder for all queues: the total, on the first.
        return {queues[0]: len(_waiting_files(settings))} if queues else {}
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    prefix = settings.broker_key_prefix
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in _priority_lists(prefix, queue):
                pipe.llen(key)
        lengths = pipe.execute()
    finally:
        client.close()
    per_queue = len(PRIORITY_STEPS)
    return {
        queue: int(sum(lengths[i * per_queue : (i + 1) * per_queue]))
        for i, queue in enumerate(queues)
    }
