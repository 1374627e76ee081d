"""The object store misbehaves during the upload: 503 SlowDown, bytes changed on the way,
refused connections. Transient faults are retried and the job succeeds with verified files;
lasting ones end the job `failed` with a reason naming the upload, and leave no manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.s3_proxy import S3FaultProxy
from tests.support.stack import Stack, bucket_view, fast_job, record, stack

pytestmark = pytest.mark.integration
TERMINAL = ("succeeded", "failed", "cancelled")


def run(deployment: Stack, proxy: S3FaultProxy) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    job_id = deployment.submit(fast_job())["id"]
    done = deployment.wait_job(job_id, lambda j: j["state"] in TERMINAL, "the job", timeout=240)
    return done, time.monotonic() - started


def test_object_store_faults_are_retried_then_fail_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    proxy = S3FaultProxy(settings.s3_endpoint_url or "")
    proxy.start()
    rows: dict[str, Any] = {}
    # Two tries per S3 request and two attempts per job keep the lasting-fault cases short.
    overrides = {"s3_endpoint_url": proxy.url, "max_attempts": 2, "s3_max_attempts": 2}
    try:
        with stack(settings, tmp_path, **overrides) as deployment:
            deployment.start_worker()
            cases = [
                # (name, mode, how many uploads to spoil, expected end)
                ("slow_down_x3", "slow_down", 3, "succeeded"),
                ("corrupt_once", "corrupt", 1, "succeeded"),
                ("slow_down_always", "slow_down", -1, "failed"),
                ("corrupt_always", "corrupt", -1, "failed"),
            ]
            for name, mode, count, expected in cases:
                proxy.set(mode, count, only_suffix="model.safetensors")
                done, seconds = run(deployment, proxy)
                view = bucket_view(settings.s3_endpoint_url, done["id"])  # moto, not the proxy
                rows[name] = {
                    "state": done["state"],
                    "faults_injected": proxy.faults.injected,
                    "attempts": done["attempts"],
                    "seconds": round(seconds, 1),
                    "error": (done["error"] or {}).get("message", "")[:160],
                    **view,
                }
                assert done["state"] == expected, rows[name]
                assert view["open_uploads"] == 0
                if expected == "failed":
                    assert done["error"]["code"] == "max_attempts_exceeded"
                    assert "model/model.safetensors" in done["error"]["message"]
                    assert view["manifests"] == [] and view["objects"] == 0, view
                else:
                    assert proxy.faults.injected == count
                    listing = deployment.client.get(
                        f"/v1/jobs/{done['id']}/artifacts", headers=deployment.headers
                    ).json()
                    assert len(view["manifests"]) == 1
                    assert {i["path"] for i in listing["items"]} >= {"model/model.safetensors"}
            # Refused connections: the proxy stops listening for the whole job.
            proxy.set("pass")
            proxy.stop()
            done, seconds = run(deployment, proxy)
            view = bucket_view(settings.s3_endpoint_url, done["id"])  # moto, not the proxy
            rows["connection_refused"] = {
                "state": done["state"],
                "attempts": done["attempts"],
                "seconds": round(seconds, 1),
                "error": (done["error"] or {}).get("message", "")[:160],
                **view,
            }
            assert done["state"] == "failed" and done["error"]["code"] == "max_attempts_exceeded"
            assert "upload of" in done["error"]["message"]
            assert view["manifests"] == []
    finally:
        proxy.stop()
        record("object_store_faults", rows)
