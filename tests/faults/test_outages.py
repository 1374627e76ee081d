"""Postgres and Redis go away while jobs are queued and running: the API answers 503 (never
500) while the database is down, no job is lost and no state moves backwards."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.jobs.reaper import reap_once
from app.jobs.state import JobState, check
from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.services import wait_until
from tests.support.stack import Stack, bucket_view, fast_job, record, stack

pytestmark = pytest.mark.integration


def state_path(deployment: Stack, job_id: str) -> list[str]:
    return [e["state"] for e in deployment.events(job_id) if e["kind"] == "state"]


def assert_legal(path: list[str]) -> None:
    """Every recorded move is one the state machine allows (so nothing regressed)."""
    for source, target in itertools.pairwise(path):
        check(JobState(source), JobState(target))


def hold_one(deployment: Stack, point: str = "compression") -> str:
    job_id = deployment.submit(fast_job(hold=point))["id"]
    wait_until(lambda: deployment.held(job_id), timeout=120, interval=0.05, what="the hold")
    return job_id


def test_postgres_restart_answers_503_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    server = PrivatePostgres()
    server.start()
    try:
        with stack(settings, tmp_path, database_url=server.url) as deployment:
            deployment.start_worker()
            running = hold_one(deployment)
            queued = deployment.submit(fast_job())["id"]
            client, headers = deployment.client, deployment.headers
            calls: dict[str, Any] = {
                "GET /v1/jobs/{id}": lambda: client.get(f"/v1/jobs/{running}", headers=headers),
                "GET /v1/jobs": lambda: client.get("/v1/jobs", headers=headers),
                "POST /v1/jobs": lambda: client.post("/v1/jobs", json=fast_job(), headers=headers),
                "POST /v1/jobs/{id}/cancel": lambda: client.post(
                    f"/v1/jobs/{queued}/cancel", headers=headers
                ),
                "GET /v1/jobs/{id}/events": lambda: client.get(
                    f"/v1/jobs/{running}/events", headers=headers
                ),
                "GET /readyz": lambda: client.get("/readyz"),
            }
            server.stop()
            down_at = time.monotonic()
            answers: dict[str, int] = {}
            for _ in range(2):  # the second round runs after the auth cache expired
                for name, call in calls.items():
                    response = call()
                    answers[name] = response.status_code
                    assert response.status_code == 503, (name, response.text)
                    assert response.headers["content-type"].startswith("application/")
                    if name != "GET /readyz":
                        assert response.json()["code"] == "database_unavailable"
                        assert response.headers["Retry-After"] == "5"
                time.sleep(settings.auth_cache_ttl_s + 0.2)
            server.start()
            downtime = time.monotonic() - down_at
            deployment.release(running)
            deployment.unavailable = 0
            finished = {}
            for job_id in (running, queued):
                job = deployment.wait_job(
                    job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"), "finish"
                )
                finished[job_id] = job["state"]
                assert_legal(state_path(deployment, job_id))
            # The refused POST created nothing, the refused cancel changed nothing.
            listed = client.get("/v1/jobs", headers=headers).json()["items"]
            assert {j["id"] for j in listed} == {running, queued}
            assert set(finished.values()) == {"succeeded"}, finished
            record(
                "postgres_restart",
                {
                    "downtime_s": round(downtime, 1),
                    "answers_while_down": answers,
                    "server_errors": 0,
                    "answers_503_after_restart": deployment.unavailable,
                    "jobs_lost": 0,
                    "illegal_moves": 0,
                    "attempts": {j: deployment.job(j)["attempts"] for j in (running, queued)},
                },
            )
    finally:
        server.destroy()


def test_redis_restart_and_flushall_lose_no_job(settings: Settings, tmp_path: Path) -> None:
    server = PrivateRedis()
    server.start()
    try:
        # Messages of queued jobs older than requeue_after_s are re-sent by the reaper.
        with stack(settings, tmp_path, broker_url=server.url, requeue_after_s=3.0) as deployment:
            deployment.start_worker()
            running = hold_one(deployment)
            queued = [deployment.submit(fast_job())["id"] for _ in range(3)]
            assert all(deployment.job(j)["state"] == "queued" for j in queued)
            server.client().flushall()  # every message, queued and unacked, is gone
            server.stop()
            time.sleep(1.0)
            server.start()
            restarted = time.monotonic()
            deployment.release(running)
            states = {}
            for job_id in (running, *queued):
                job = deployment.wait_job(
                    job_id,
                    lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                    "finish after the Redis restart",
                    timeout=240,
                )
                states[job_id] = job["state"]
                assert_legal(state_path(deployment, job_id))
            lost = sum(state != "succeeded" for state in states.values())
            record(
                "redis_restart_flushall",
                {
                    "jobs": len(states),
                    "jobs_lost": lost,
                    "all_succeeded_after_s": round(time.monotonic() - restarted, 1),
                    "requeue_after_s": deployment.settings.requeue_after_s,
                },
            )
            assert lost == 0, states
    finally:
        server.stop()


# CI's outage; the 30 s figure: SQUASH_REDIS_OUTAGE_S=30.
OUTAGE_S = float(os.environ.get("SQUASH_REDIS_OUTAGE_S", "6"))


def test_a_redis_outage_leaves_running_jobs_running(settings: Settings, tmp_path: Path) -> None:
    """Three jobs run on three workers when Redis goes away: each finishes on its first attempt
    (the lease, not the broker, says who runs a job) and publishes once."""
    server = PrivateRedis()
    server.start()
    try:
        with stack(settings, tmp_path, broker_url=server.url) as deployment:
            for _ in range(3):
                deployment.start_worker()
            running = [hold_one(deployment) for _ in range(3)]
            server.stop()
            time.sleep(OUTAGE_S)  # the outage itself: nothing to wait for but the clock
            for job_id in running:
                deployment.release(job_id)
            server.start()
            restarted = time.monotonic()
            jobs = [
                deployment.wait_job(
                    job_id,
                    lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                    "finish after the outage",
                    timeout=240,
                )
                for job_id in running
            ]
            attempts = [job["attempts"] for job in jobs]
            manifests = [
                len(bucket_view(deployment.settings.s3_endpoint_url, j)["manifests"])
                for j in running
            ]
            record(
                "redis_outage_running_jobs",
                {
                    "outage_s": OUTAGE_S,
                    "running_jobs": len(running),
                    "succeeded": sum(job["state"] == "succeeded" for job in jobs),
                    "attempts_consumed_by_broker_outage": sum(a - 1 for a in attempts),
                    "all_done_after_restart_s": round(time.monotonic() - restarted, 1),
                },
            )
            assert [job["state"] for job in jobs] == ["succeeded"] * 3
            assert attempts == [1, 1, 1] and manifests == [1, 1, 1]
    finally:
        server.stop()


def messages(server: PrivateRedis, deployment: Stack) -> int:
    client = server.client()
    keys = client.keys(deployment.settings.broker_key_prefix + "gpu*")
    return sum(int(client.llen(key)) for key in keys)


def test_the_reaper_resends_only_messages_that_are_gone(settings: Settings, tmp_path: Path) -> None:
    """200 jobs wait on a queue no worker reads, far longer than REQUEUE_AFTER_S: nothing is sent
    twice. After FLUSHALL every message is gone: each is sent again once."""
    server = PrivateRedis()
    server.start()
    requeue_after_s = 0.2
    try:
        with stack(
            settings,
            tmp_path,
            broker_url=server.url,
            requeue_after_s=requeue_after_s,
            reaper_enabled=False,  # the rounds below are the only reaper
        ) as deployment:
            jobs = [deployment.submit(fast_job(device="gpu"))["id"] for _ in range(200)]
            assert messages(server, deployment) == 200

            def rounds(count: int) -> dict[str, int]:
                total: dict[str, int] = {}
                for _ in range(count):
                    time.sleep(requeue_after_s)  # every message is "old" again
                    for key, value in reap_once(deployment.settings).items():
                        total[key] = total.get(key, 0) + value
                return total

            waited = rounds(6)
            assert waited["resent"] == 0 and waited["still_waiting"] >= 200, waited
            assert messages(server, deployment) == 200

            server.client().flushall()
            lost = rounds(4)  # 100 jobs per round are looked at
            assert lost["resent"] == 200, lost
            assert messages(server, deployment) == 200
            assert rounds(2)["resent"] == 0
            assert all(deployment.job(j)["state"] == "queued" for j in jobs[:5])
            record(
                "reaper_resends",
                {
                    "queued_jobs": len(jobs),
                    "rounds_waiting": 6,
                    "resends_while_waiting": waited["resent"],
                    "messages_really_lost": 200,
                    "resends_after_flushall": lost["resent"],
                },
            )
    finally:
        server.stop()
