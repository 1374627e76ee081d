"""Per-tenant rate limits and quotas (429 + Retry-After) and body limits (413), on the real
Redis and Postgres, through API instances that share them like a multi-process deployment."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.support.jobs import tiny_job


def limited_app(settings: Settings, **limits: Any) -> TestClient:
    # Only the API: the session's app already runs a reaper and a webhook dispatcher.
    quiet = {"reaper_enabled": False, "webhook_dispatch_enabled": False}
    return TestClient(create_app(settings.model_copy(update={**quiet, **limits})))


@pytest.fixture
def tenant(make_key: Callable[..., str]) -> Callable[[], dict[str, str]]:
    return lambda: {"Authorization": f"Bearer {make_key()}"}


def parked_job(**overrides: Any) -> dict[str, Any]:
    return tiny_job(device="gpu", **overrides)  # nobody consumes the gpu queue in these tests


def assert_429(response: httpx.Response, code: str) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


@pytest.fixture
def two_api_processes(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    limits = {
        "broker_key_prefix": f"{settings.broker_key_prefix}limits-{uuid.uuid4().hex[:6]}:",
        "rate_limit_per_minute": 60,
        "rate_limit_burst": 5,
    }
    with limited_app(settings, **limits) as one, limited_app(settings, **limits) as two:
        yield one, two


def test_request_rate_is_per_tenant_and_shared_by_api_processes(
    two_api_processes: tuple[TestClient, TestClient], tenant: Callable[[], dict[str, str]]
) -> None:
    one, two = two_api_processes
    alice, bob = tenant(), tenant()
    # A burst of 5 spread over both processes: one bucket in Redis, not one per process.
    for client in (one, two, one, two, one):
        assert client.get("/v1/jobs", headers=alice).status_code == 200
    refused = two.get("/v1/jobs", headers=alice)
    retry_after = assert_429(refused, "rate_limited")
    assert "60 a minute" in refused.json()["detail"]
    # Another tenant has its own bucket.
    assert one.get("/v1/jobs", headers=bob).status_code == 200
    # Retry-After is honest: after it, the next request passes.
    time.sleep(retry_after)
    assert one.get("/v1/jobs", headers=alice).status_code == 200
    # Unauthenticated requests are refused as 401 before any bucket is touched.
    assert one.get("/v1/jobs").status_code == 401


def test_submissions_have_their_own_bucket_and_a_refused_one_creates_nothing(
    settings: Settings, tenant: Callable[[], dict[str, str]]
) -> None:
    limits = {
        "broker_key_prefix": f"{settings.broker_key_prefix}submits-{uuid.uuid4().hex[:6]}:",
        "submit_rate_limit_per_minute": 6,
        "submit_rate_limit_burst": 2,
    }
    headers = tenant()
    with limited_app(settings, **limits) as api:
        accepted = [api.post("/v1/jobs", json=parked_job(), headers=headers) for _ in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        assert_429(api.post("/v1/jobs", json=parked_job(), headers=headers), "rate_limited")
        assert api.get("/v1/jobs", headers=headers).status_code == 200  # reads still pass
        listed = api.get("/v1/jobs", headers=headers).json()["items"]
        assert sorted(j["id"] for j in listed) == sorted(r.json()["id"] for r in accepted)


def test_active_job_quota_holds_under_concurrent_submissions(
    settings: Settings, tenant: Callable[[], dict[str, str]]
) -> None:
    headers, other = tenant(), tenant()
    with limited_app(settings, max_active_jobs_per_tenant=3) as api:
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(api.post("/v1/jobs", json=parked_job(), headers=headers))

        threads = [threading.Thread(target=post) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses == [202] * 3 + [429] * 7, statuses
        for response in results:
            if response.status_code == 429:
                assert_429(response, "quota_exceeded")
        assert len(api.get("/v1/jobs", headers=headers).json()["items"]) == 3
        # The quota is per tenant, and a finished job frees its place.
        assert api.post("/v1/jobs", json=parked_job(), headers=other).status_code == 202
        first = next(r.json()["id"] for r in results if r.status_code == 202)
        assert api.post(f"/v1/jobs/{first}/cancel", headers=headers).status_code == 202
        assert api.post("/v1/jobs", json=parked_job(), headers=headers).status_code == 202
        # An idempotent replay of an accepted job is not a new job: no quota needed.
        keyed = {**headers, "Idempotency-Key": "replay-me"}
        second = next(r.json()["id"] for r in results[::-1] if r.status_code == 202)
        api.post(f"/v1/jobs/{second}/cancel", headers=headers)
        original = api.post("/v1/jobs", json=parked_job(), headers=keyed)
        assert original.status_code == 202
        assert_429(api.post("/v1/jobs", json=parked_job(seed=1), headers=headers), "quota_exceeded")
        replay = api.post("/v1/jobs", json=parked_job(), headers=keyed)
        assert replay.status_code == 202 and replay.json()["id"] == original.json()["id"]


def test_oversized_bodies_get_413_before_parsing(
    settings: Settings, tenant: Callable[[], dict[str, str]]
) -> None:
    headers = tenant()
    with limited_app(settings, max_request_bytes=4096) as api:
        big = parked_job(labels={f"k{i}": "v" * 200 for i in range(20)})
        response = api.post("/v1/jobs", json=big, headers=headers)
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "payload_too_large"
        assert response.json()["errors"][0]["field"] == "body"
        # Without a Content-Length (chunked), the body is counted as it arrives.
        chunks = iter([b'{"model": ', b" " * 5000, b"}"])
        streamed = api.post(
            "/v1/jobs",
            content=chunks,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert api.get("/v1/jobs", headers=headers).json()["items"] == []
        # Under the limit, the same route works.
        assert api.post("/v1/jobs", json=parked_job(), headers=headers).status_code == 202


def test_batched_tokens_never_admit_past_the_limit(
    settings: Settings, tenant: Callable[[], dict[str, str]]
) -> None:
    limits = {
        "broker_key_prefix": f"{settings.broker_key_prefix}batch-{uuid.uuid4().hex[:6]}:",
        "rate_limit_per_minute": 600,  # 10 a second
        "rate_limit_burst": 100,  # each process takes 5 tokens from Redis at a time
    }
    headers = tenant()
    with limited_app(settings, **limits) as one, limited_app(settings, **limits) as two:
        started = time.monotonic()
        admitted = 0
        for i in range(300):
            response = (one, two)[i % 2].get("/v1/jobs", headers=headers)
            if response.status_code == 429:
                assert_429(response, "rate_limited")
                continue
            assert response.status_code == 200
            admitted += 1
        elapsed = time.monotonic() - started
    # Never more than the burst plus what refilled meanwhile; at most a batch per process
    # refused early.
    assert admitted <= 100 + 10 * elapsed + 1, (admitted, elapsed)
    assert admitted >= 100 - 2 * 5, admitted
