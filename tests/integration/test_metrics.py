"""GET /metrics parses with Prometheus's own text parser and its job figures are the database's."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app.auth import service as auth_service
from app.config import Settings
from app.db import session_scope
from app.jobs.models import Job
from app.main import create_app
from tests.support.jobs import tiny_job, wait_for_state
from tests.support.services import WorkerProcess, free_port, private_stack_settings
from tests.support.stack import fast_job

pytestmark = pytest.mark.integration


def scrape(client: TestClient, **headers: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(response.text)
    }


def test_metrics_match_the_database(api: TestClient, tenant_a: dict, settings: Settings) -> None:
    parked = [
        api.post("/v1/jobs", json=tiny_job(device="gpu"), headers=tenant_a).json()["id"]
        for _ in range(3)
    ]
    assert api.post(f"/v1/jobs/{parked[0]}/cancel", headers=tenant_a).status_code in (200, 202)
    api.get(f"/v1/jobs/{parked[1]}", headers=tenant_a)

    def in_database() -> dict[tuple[str, str], int]:
        counted = select(Job.state, Job.queue, func.count()).group_by(Job.state, Job.queue)
        with session_scope(settings.database_url) as session:
            return {(str(state), str(queue)): n for state, queue, n in session.execute(counted)}

    # The session's worker may finish an earlier test's job meanwhile: one of the two holds.
    before = in_database()
    families = scrape(api)
    after = in_database()
    reported = {(labels["state"], labels["queue"]): v for labels, v in families["squash_jobs"]}
    assert reported in (before, after)
    assert reported[("queued", "gpu")] >= 2 and reported[("cancelled", "gpu")] >= 1

    ended = {
        (labels["method"], labels["state"]): v
        for labels, v in families["squash_jobs_ended_last_hour"]
    }
    assert ended[("rtn", "cancelled")] >= 1
    # The gpu pool's messages: the parked jobs' (nobody consumes that queue in the tests).
    waiting = dict((labels["queue"], v) for labels, v in families["squash_queue_messages"])
    assert waiting["gpu"] >= 2

    requests = families["squash_http_request_duration_seconds"]
    routes = {s[0].get("route") for s in requests}
    assert "/v1/jobs/{job_id}" in routes  # the template, never an id
    assert not any(job_id in str(routes) for job_id in parked)


def test_a_metrics_token_guards_the_endpoint(settings: Settings) -> None:
    guarded = settings.model_copy(
        update={
            "metrics_token": "scrape-me",
            "reaper_enabled": False,
            "webhook_dispatch_enabled": False,
        }
    )
    with TestClient(create_app(guarded)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert "squash_jobs" in scrape(client, authorization="Bearer scrape-me")


def test_a_worker_serves_the_phases_and_memory_of_the_jobs_it_ran(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A worker's own /metrics (WORKER_METRICS_PORT): each job runs in a forked process, and the
    main process serves what every finished one recorded (prometheus-client multiprocess)."""
    port = free_port()
    overrides = {
        name: getattr(settings, name)
        for name in ("object_store_url", "s3_endpoint_url", "model_dirs", "hf_offline")
    }
    with private_stack_settings(
        "workermetrics", **overrides, work_dir=tmp_path / "work", worker_metrics_port=port
    ) as private:
        with session_scope(private.database_url) as session:
            key = auth_service.create_key(session, tenant_name="metrics").secret
        worker = WorkerProcess(private, tmp_path / "worker.log", queues="cpu")
        try:
            with TestClient(create_app(private)) as api:
                job = api.post(
                    "/v1/jobs", json=fast_job(), headers={"Authorization": f"Bearer {key}"}
                ).json()
                headers = {"Authorization": f"Bearer {key}"}
                done = wait_for_state(api, headers, job["id"], worker=worker)
                assert done["state"] == "succeeded", (done["error"], worker.tail())
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            worker.stop()
    families = {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }
    assert families["squash_worker_jobs"][(("outcome", "succeeded"),)] == 1
    phases = families["squash_worker_phase_seconds"]
    assert phases[(("le", "+Inf"), ("method", "rtn"), ("phase", "stage"))] == 1
    assert any(dict(k).get("phase") == "evaluate_compressed" for k in phases), phases
    peaks = families["squash_worker_phase_peak_memory_bytes"]
    counted = {dict(k)["phase"]: v for k, v in peaks.items() if dict(k).get("le") == "+Inf"}
    assert counted and all(v == 1 for v in counted.values()), peaks
