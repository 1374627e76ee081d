"""Fixtures over the machine's real Postgres and Redis, a moto S3 server over HTTP, and real
Celery worker processes. Loaded by tests/conftest.py; each starts only when a test asks for it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from app.auth import service as auth_service
from app.cli.embedded import migrate
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from tests.support.services import (
    FAST_FAILURE_TIMINGS,
    REDIS_URL,
    WorkerProcess,
    clear_redis_prefix,
    create_database,
    drop_database,
    free_port,
    running_api,
)

BUCKET = "squash-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name, url = create_database()
    migrate(url)
    yield url
    drop_database(name, url)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    prefix = f"squash-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    clear_redis_prefix(prefix)


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    redis_prefix: str,
    s3_endpoint: str,
    models_root: Path,
    tiny_model_dir: Path,
    session_tmp: Path,
) -> Settings:
    # Failure timings in seconds, not minutes: FAST_FAILURE_TIMINGS (tests/support/services.py).
    return Settings(
        database_url=database_url,
        broker_url=REDIS_URL,
        broker_key_prefix=redis_prefix,
        object_store_url=f"s3://{BUCKET}/artifacts",
        s3_endpoint_url=s3_endpoint,
        **FAST_FAILURE_TIMINGS,
        requeue_after_s=30.0,
        model_dirs=(models_root,),
        # S3 sources: shared folders and one per tenant (tests/faults/test_abuse.py).
        source_s3_prefixes=(
            f"s3://{BUCKET}/models/",
            f"s3://{BUCKET}/data/",
            f"s3://{BUCKET}/tasks/",
            f"s3://{BUCKET}/tenants/{{tenant}}/",
        ),
        # Small enough that the abuse suite's sparse 3 GB weights and 20 MB dataset are over.
        max_model_bytes=2 * 10**9,
        max_dataset_bytes=10 * 10**6,
        work_dir=session_tmp / "work",
        default_device="cpu",
        hf_offline=True,
        # The tests' webhook receivers listen on loopback over http: an operator's exemption.
        webhook_allowed_hosts=("127.0.0.1",),
        webhook_retry_base_s=0.2,
        webhook_poll_interval_s=0.1,
        # Tests park many jobs on the unconsumed gpu queue and poll fast: generous limits
        # here; tests/integration/test_limits.py checks the limits with small ones.
        rate_limit_per_minute=6000,
        rate_limit_burst=1000,
        submit_rate_limit_per_minute=600,
        submit_rate_limit_burst=200,
        max_active_jobs_per_tenant=0,
    )


@pytest.fixture(scope="session")
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def make_key(settings: Settings) -> Callable[..., str]:
    def make(tenant: str | None = None) -> str:
        with session_scope(settings.database_url) as session:
            issued = auth_service.create_key(session, tenant_name=tenant or uuid.uuid4().hex[:8])
        return issued.secret

    return make


@pytest.fixture(scope="session")
def tenant_a(make_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('tenant-a')}"}


@pytest.fixture(scope="session")
def tenant_b(make_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('tenant-b')}"}


@pytest.fixture(scope="session")
def worker(settings: Settings, session_tmp: Path) -> Iterator[WorkerProcess]:
    # Only the cpu queue: API tests park jobs on the gpu queue (nobody consumes it there), and
    # crash tests start their own gpu-queue workers so this one never takes their job.
    proc = WorkerProcess(settings, session_tmp / "worker-main.log", queues="cpu")
    yield proc
    proc.stop()


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        proc = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", queues="gpu")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    """The API as a real uvicorn process on the session's settings (CLI, generated-client and
    stream tests: HTTP end to end, not the in-process TestClient)."""
    with running_api(settings) as port:
        yield f"http://127.0.0.1:{port}"
