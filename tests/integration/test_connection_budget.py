"""An API process never holds more Postgres connections than DB_CONNECTIONS_PER_PROCESS, however
many requests arrive at once: past it requests wait for a pooled connection, they do not fail.
(The first 500-client load run exhausted Postgres' max_connections with per-pool sizes.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import psycopg

from app.auth import service as auth_service
from app.db import PoolSizes, get_engine, session_scope
from tests.support.services import ADMIN_DSN, private_stack_settings, running_api
from tests.support.stack import record

BUDGET = 8
CONCURRENT = 150
JOB = {
    "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
    "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 64}}],
    "device": "gpu",  # parked: no worker consumes the gpu queue in this test
}


def _watch_connections(database: str, stop: threading.Event, peak: list[int]) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone()
            peak[0] = max(peak[0], int(row[0]) if row else 0)
            stop.wait(0.01)


async def _burst(port: int, key: str) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=CONCURRENT)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits, timeout=60
    ) as client:
        created = await asyncio.gather(*[client.post("/v1/jobs", json=JOB) for _ in range(30)])
        ids = [r.json()["id"] for r in created if r.status_code == 202]
        calls = []
        for i in range(CONCURRENT):
            job_id = ids[i % len(ids)] if ids else "00000000-0000-0000-0000-000000000000"
            kind = i % 4
            if kind == 0:
                calls.append(client.get(f"/v1/jobs/{job_id}"))
            elif kind == 1:
                calls.append(client.get("/v1/jobs?limit=20"))
            elif kind == 2:
                calls.append(client.get(f"/v1/jobs/{job_id}/events"))
            else:
                calls.append(client.post("/v1/jobs", json=JOB))
        answered = await asyncio.gather(*calls)
    return [r.status_code for r in [*created, *answered]]


def test_api_process_stays_inside_its_connection_budget(tmp_path: Path) -> None:
    with private_stack_settings(
        "budget",
        db_connections_per_process=BUDGET,
        rate_limit_per_minute=0,
        submit_rate_limit_per_minute=0,
        max_active_jobs_per_tenant=0,
        webhook_dispatch_enabled=False,
        object_store_url=f"file://{tmp_path / 'objects'}",
        secret_key="test-signing-key",
    ) as settings:
        with session_scope(settings.database_url) as session:
            key = auth_service.create_key(session, tenant_name="budget").secret
        get_engine(settings.database_url).dispose()  # count the API's connections only
        database = settings.database_url.rsplit("/", 1)[1]
        with running_api(settings, workers=1) as port:
            stop, peak = threading.Event(), [0]
            watcher = threading.Thread(target=_watch_connections, args=(database, stop, peak))
            watcher.start()
            try:
                statuses = asyncio.run(_burst(port, key))
            finally:
                stop.set()
                watcher.join()
    record(
        "connection_budget",
        {"requests": len(statuses), "peak_connections": peak[0], "budget": BUDGET},
    )
    assert sorted(set(statuses)) == [200, 202], statuses
    assert peak[0] <= BUDGET
    # More than either pool holds alone: the burst used both (ORM and status reads).
    assert peak[0] > max(PoolSizes.split(BUDGET)), peak[0]
