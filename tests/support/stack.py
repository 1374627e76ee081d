"""A whole Squash deployment for one fault test: its own database, Redis key prefix, API app,
work dir and Celery worker processes, so killing and restarting parts of it disturbs no other
test. Figures the fault tests measure are written to test-artifacts/faults/ and printed."""

from __future__ import annotations

import json
import math
import os
import statistics
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from fastapi.testclient import TestClient

from app.auth import service as auth_service
from app.cli.embedded import migrate
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from tests.support.fixtures import BUCKET
from tests.support.jobs import tiny_job
from tests.support.services import (
    ROOT,
    WorkerProcess,
    clear_redis_prefix,
    create_database,
    drop_database,
    wait_until,
)
from workers.faults import HOLD_LABEL, marker_path

FIGURES_DIR = ROOT / "test-artifacts" / "faults"
RECORDED: dict[str, dict[str, Any]] = {}  # shown in the terminal summary (tests/conftest.py)


@dataclass
class Stack:
    settings: Settings
    client: TestClient
    headers: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    unavailable: int = 0  # 503 answers seen while waiting for jobs

    def start_worker(self, queues: str = "cpu") -> WorkerProcess:
        proc = WorkerProcess(
            self.settings, self.log_dir / f"worker-{len(self.workers)}.log", queues
        )
        self.workers.append(proc)
        return proc

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    def worker_of(self, pid: int) -> WorkerProcess:
        """The worker whose process group holds `pid` (a pool child of its celery main)."""
        group = os.getpgid(pid)
        return next(w for w in self.alive() if w.proc.pid == group)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=body, headers=self.headers)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}", headers=self.headers).json()

    def wait_job(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 120
    ) -> dict[str, Any]:
        """Poll the job every 50 ms until `done(job)`; shows the workers' logs on timeout."""

        def probe() -> dict[str, Any] | None:
            response = self.client.get(f"/v1/jobs/{job_id}", headers=self.headers)
            if response.status_code == 503:  # a client retries those
                self.unavailable += 1
                return None
            job = response.json()
            return job if done(job) else None

        try:
            return wait_until(
                probe,
                timeout=timeout,
                interval=0.05,
                what=what,
            )
        except TimeoutError:
            print(self.logs())  # noqa: T201 - shown only on failure
            raise

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.client.get(f"/v1/jobs/{job_id}/events", headers=self.headers).json()["items"]

    def marker(self, job_id: str) -> Path:
        return marker_path(self.settings, job_id)

    def held(self, job_id: str) -> dict[str, Any] | None:
        """{point, pid} once the job's worker stopped at its fault point."""
        path = self.marker(job_id)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def hold(self, point: str) -> tuple[str, WorkerProcess]:
        """Submit a job that stops at `point`; returns it and the worker holding it."""
        job_id = self.submit(fast_job(hold=point))["id"]
        held = wait_until(
            lambda: self.held(job_id), timeout=120, interval=0.05, what=f"hold at {point}"
        )
        assert held["point"] == point
        return job_id, self.worker_of(held["pid"])

    def release(self, job_id: str) -> None:
        self.marker(job_id).unlink(missing_ok=True)

    def logs(self) -> str:
        return "\n".join(w.tail(60) for w in self.workers)


@contextmanager
def stack(settings: Settings, tmp_path: Path, **overrides: Any) -> Iterator[Stack]:
    """`settings` (the session's) with a fresh database and Redis prefix, fault injection on."""
    name, database_url = None, overrides.pop("database_url", None)
    if database_url is None:
        name, database_url = create_database()
    migrate(database_url)
    prefix = f"squash-fault-{uuid.uuid4().hex[:8]}:"
    own = settings.model_copy(
        update={
            "database_url": database_url,
            "broker_key_prefix": prefix,
            "work_dir": tmp_path / "work",
            "fault_injection": True,
            **overrides,
        }
    )
    with session_scope(own.database_url) as session:
        secret = auth_service.create_key(session, tenant_name="faults").secret
    deployment = Stack(
        own, TestClient(create_app(own)), {"Authorization": f"Bearer {secret}"}, tmp_path
    )
    deployment.client.__enter__()
    try:
        yield deployment
    finally:
        for worker in deployment.workers:
            worker.kill()
            worker.log.close()
        deployment.client.__exit__(None, None, None)
        if own.broker_url == settings.broker_url:
            clear_redis_prefix(prefix)
        if name is not None:
            drop_database(name, database_url)


def fast_job(hold: str | None = None, **overrides: Any) -> dict[str, Any]:
    """`tiny_job` cut to seconds: no serving probe, no original evaluation, no layer error;
    `hold` names the fault point its first attempt stops at."""
    body = tiny_job(
        evaluation={
            "max_tokens": 512,
            "context_length": 64,
            "compare_original": False,
            "prompts": ["x"],
            "max_new_tokens": 2,
            "efficiency": {"enabled": False},
            "layer_error_tokens": 0,
        },
        labels={HOLD_LABEL: hold} if hold else {},
    )
    body.update(overrides)
    return body


def slow_body() -> dict[str, Any]:
    """Evaluation of the original over 40k tokens at stride 1: minutes of per-window checks
    (a job to cancel while it runs through check points)."""
    body = fast_job()
    body["evaluation"] |= {"max_tokens": 40000, "context_length": 32, "stride": 1}
    body["evaluation"]["compare_original"] = True
    return body


def gptq_job(hold: str | None = None) -> dict[str, Any]:
    """A GPTQ stage on the 6-layer tiny Llama (`tiny-llama-6-layers`), for the layer-wise
    fault point `layers_past_half`."""
    return fast_job(
        hold,
        model={"kind": "local", "path": "tiny-llama-6-layers"},
        recipe=[{"method": "gptq", "params": {"bits": 4, "group_size": 32}}],
        calibration={"num_samples": 8, "max_seq_length": 128},
    )


def scratch_bytes(settings: Settings) -> int:
    """What attempts left in the workers' scratch folders (workers/scratch.py)."""
    root = Path(settings.work_dir) / "jobs"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def bucket_view(endpoint_url: str | None, job_id: str) -> dict[str, Any]:
    """A job's attempt files as the bucket holds them (straight from the S3 endpoint given)."""
    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    prefix = f"artifacts/jobs/{job_id}/"
    keys = [
        item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    ]
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return {
        "manifests": [key for key in keys if key.endswith("/manifest.json")],
        "attempt_prefixes": sorted({key.split("/")[3] for key in keys}),
        "objects": len(keys),
        "open_uploads": len(uploads),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of a handful of runs is their maximum)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p99_s": round(percentile(values, 99), 2),
        "max_s": round(max(values), 2),
    }


def record(name: str, figures: dict[str, Any]) -> None:
    """Write a fault test's figures for the README table, and show them in the test output."""
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2))
    RECORDED[name] = figures
