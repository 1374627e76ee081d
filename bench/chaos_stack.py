"""The deployment bench/chaos.py breaks: private Postgres and Redis it may stop and kill, a moto
S3 server over HTTP, the API as a real uvicorn process (so it can be SIGKILLed while POSTs are in
flight) and Celery worker processes, all on this machine's own binaries. Nothing of the shared
services is touched; everything is removed at the end."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from app.auth import service as auth_service
from app.cli.embedded import migrate
from app.config import Settings
from app.db import get_engine, session_scope
from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.services import (
    FAST_FAILURE_TIMINGS,
    WorkerProcess,
    free_port,
    serve,
    settings_env,
    wait_until,
)
from tests.support.tiny_model import build_tiny_model

BUCKET = "squash-chaos"


class ApiProcess:
    """`uvicorn app.main:app_factory` on a fixed port (it comes back on the same one after a
    SIGKILL, as behind a load balancer); JSON logs, so the reaper's rounds can be counted."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Up to a minute: a restart beside three busy workers took 18 s on 2 cores.
        env = {**settings_env(self.settings), "LOG_JSON": "true"}
        self.proc = serve(
            "app.main:app_factory", self.port, env, True, log_path=self.log_path, start_timeout_s=60
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class ChaosStack:
    settings: Settings
    postgres: PrivatePostgres
    redis: PrivateRedis
    api: ApiProcess
    log_dir: Path
    headers: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # any 5xx but a 503
    unavailable: int = 0  # 503 answers (database down): a client retries those

    def start_worker(self) -> WorkerProcess:
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.settings, log, queues="cpu")
        self.workers.append(worker)
        return worker

    def worker_of(self, pid: int) -> WorkerProcess:
        """The worker whose process group holds `pid` (its Celery pool child)."""
        group = os.getpgid(pid)
        return next(w for w in self.workers if w.proc.poll() is None and w.proc.pid == group)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call as a careful client makes it: refused connections, 503 and any other 5xx
        (counted: the API must never answer one) are retried for up to 2 minutes (the API or
        its database restarting); anything else is the answer."""
        deadline = time.monotonic() + 120
        while True:
            try:
                response = httpx.request(
                    method,
                    f"{self.api.url}{path}",
                    headers={**self.headers, **(headers or {})},
                    timeout=15,
                    **kwargs,
                )
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if response.status_code < 500 or time.monotonic() > deadline:
                return response
            if response.status_code == 503:
                self.unavailable += 1
            else:
                self.server_errors.append(f"{method} {path}: {response.status_code}")
            time.sleep(0.2)

    def submit(self, body: dict[str, Any], key: str) -> str:
        """POST with an Idempotency-Key, retried until answered: one job per key."""
        response = self.request("POST", "/v1/jobs", {"Idempotency-Key": key}, json=body)
        if response.status_code not in (200, 201, 202):
            raise RuntimeError(f"submission refused: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{job_id}").json())

    def wait_job(self, job_id: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (job := self.job(job_id))["state"] in states and job,
                timeout=timeout,
                interval=0.05,
                what=f"job {job_id} to reach {sorted(states)}",
            )
        )

    def logs(self, lines: int = 40) -> str:
        return "\n".join(w.tail(lines) for w in self.workers)


def chaos_settings(
    root: Path, models: Path, database_url: str, broker_url: str, s3: str
) -> Settings:
    """Short heartbeats and leases (as the fault suite's), so a run takes minutes; the reaper
    re-sends a lost message after REQUEUE_AFTER_S = 10 s."""
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        broker_key_prefix="chaos:",
        object_store_url=f"s3://{BUCKET}/artifacts",
        s3_endpoint_url=s3,
        **FAST_FAILURE_TIMINGS,
        requeue_after_s=10.0,
        model_dirs=(models,),
        work_dir=root / "work",
        default_device="cpu",
        hf_offline=True,
        fault_injection=True,
        rate_limit_per_minute=60000,
        rate_limit_burst=10000,
        submit_rate_limit_per_minute=6000,
        submit_rate_limit_burst=1000,
        max_active_jobs_per_tenant=0,
    )


@contextmanager
def chaos_stack(workers: int) -> Iterator[ChaosStack]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's line per S3 request
    for name, value in (("AWS_ACCESS_KEY_ID", "chaos"), ("AWS_SECRET_ACCESS_KEY", "chaos")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="squash-chaos-"))
    build_tiny_model(root / "models" / "tiny-llama")
    build_tiny_model(root / "models" / "tiny-llama-6-layers", layers=6)
    postgres, redis = PrivatePostgres(), PrivateRedis()
    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    api: ApiProcess | None = None
    deployment: ChaosStack | None = None
    try:
        postgres.start()
        redis.start()
        moto.start()
        s3 = f"http://127.0.0.1:{s3_port}"
        boto3.client("s3", endpoint_url=s3).create_bucket(Bucket=BUCKET)
        settings = chaos_settings(root, root / "models", postgres.url, redis.url, s3)
        migrate(settings.database_url)
        with session_scope(settings.database_url) as session:
            secret = auth_service.create_key(session, tenant_name="chaos").secret
        get_engine(settings.database_url).dispose()
        api = ApiProcess(settings, root / "api.log")
        api.start()
        deployment = ChaosStack(settings, postgres, redis, api, root)
        deployment.headers = {"Authorization": f"Bearer {secret}"}
        for _ in range(workers):
            deployment.start_worker()
        yield deployment
    finally:
        for worker in deployment.workers if deployment else []:
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGCONT)  # a stopped one cannot die
            worker.kill()
            worker.log.close()
        if api is not None:
            api.kill()
        redis.stop()
        postgres.destroy()
        moto.stop()
        if os.environ.get("SQUASH_CHAOS_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
