"""Real services for integration tests: a fresh Postgres database, a Redis key prefix, a moto S3
server over HTTP, and Celery worker subprocesses. Each test run uses unique names and cleans up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.cli.embedded import migrate, worker_command
from app.config import Settings

# Short heartbeats and leases so failure tests finish in seconds (the test session's settings
# and bench/chaos.py); the production defaults are in app/config.py, and the README derives the
# failure bounds from the same formulas.
FAST_FAILURE_TIMINGS: dict[str, float] = {
    "heartbeat_interval_s": 0.5,
    "cancel_grace_s": 3.0,
    "lease_ttl_s": 4.0,
    "reaper_interval_s": 0.5,
    "auth_cache_ttl_s": 1.0,
}
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_database() -> tuple[str, str]:
    name = f"squash_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str, url: str) -> None:
    from app.db import get_engine

    get_engine(url).dispose()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def clear_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same Settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue  # unset: the child's default (None) too
        env[name.upper()] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


class WorkerProcess:
    """A real `celery worker` in its own process group (so SIGKILL takes its pool too)."""

    def __init__(self, settings: Settings, log_path: Path, queues: str = "gpu,cpu") -> None:
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.log = log_path.open("ab")
        name = f"test-{uuid.uuid4().hex[:8]}@%h"
        argv = [*worker_command(queues.split(","), 1), "--without-heartbeat", "-n", name]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def serve(
    app_ref: str,
    port: int,
    env: dict[str, str],
    factory: bool,
    workers: int = 1,
    log_path: Path | None = None,
    start_timeout_s: float = 30,
) -> subprocess.Popen[bytes]:
    """A real uvicorn server in its own process, returned once it answers (its output
    appended to `log_path` when given)."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app_ref,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if factory:
        argv.append("--factory")
    if log_path is None:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env})
    else:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{app_ref} did not start")


@contextmanager
def private_stack_settings(prefix: str, **overrides: Any) -> Iterator[Settings]:
    """Settings for a fresh migrated database and a fresh Redis key prefix, both removed
    afterwards (the contract test and the load benches each get their own)."""
    name, url = create_database()
    migrate(url)
    settings = Settings(
        database_url=url, broker_url=REDIS_URL, broker_key_prefix=f"{prefix}-{name}:", **overrides
    )
    try:
        yield settings
    finally:
        drop_database(name, url)
        clear_redis_prefix(settings.broker_key_prefix)


@contextmanager
def running_api(settings: Settings, workers: int = 1) -> Iterator[int]:
    """The Squash API under uvicorn in its own process(es); yields its port."""
    port = free_port()
    proc = serve("app.main:app_factory", port, settings_env(settings), True, workers=workers)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
