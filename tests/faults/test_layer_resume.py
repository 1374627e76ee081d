"""A worker killed in the middle of a GPTQ stage: the retried attempt restores the layers the
first one finished from the job's layer checkpoints, computes only the rest, and publishes an
artifact tensor-equal to an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import boto3
import httpx
import pytest
from safetensors.torch import load

from app.config import Settings
from tests.support.fixtures import BUCKET
from tests.support.services import wait_until
from tests.support.stack import Stack, gptq_job, stack
from tests.support.tiny_model import build_tiny_model
from workers.methods.shared.layer_resume import PAST_HALF

pytestmark = pytest.mark.integration

LAYERS = 6


def model_tensors(deployment: Stack, job_id: str) -> dict:  # type: ignore[type-arg]
    items = deployment.client.get(
        f"/v1/jobs/{job_id}/artifacts", headers=deployment.headers
    ).json()["items"]
    (weights,) = [item for item in items if item["path"].endswith("model.safetensors")]
    return load(httpx.get(weights["url"], timeout=30).content)


def layer_checkpoints(deployment: Stack, job_id: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=deployment.settings.s3_endpoint_url)
    prefix = f"artifacts/checkpoints/{job_id}/layers/"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [item["Key"] for item in listed]


def test_a_killed_gptq_stage_resumes_at_its_first_unfinished_layer(
    settings: Settings, models_root: Path, tmp_path: Path
) -> None:
    build_tiny_model(models_root / "tiny-llama-6-layers", layers=LAYERS)
    with stack(settings, tmp_path) as deployment:
        victim = deployment.start_worker()
        job_id = deployment.submit(gptq_job(hold=PAST_HALF))["id"]
        held = wait_until(
            lambda: deployment.held(job_id), timeout=180, interval=0.05, what="the hold"
        )
        assert held["point"] == PAST_HALF
        victim.kill()  # 4 of 6 layers are checkpointed
        deployment.release(job_id)
        deployment.start_worker()
        checkpoints = layer_checkpoints(deployment, job_id)
        assert len(checkpoints) == 4 + 1  # four layers and the pointer, before the retry
        done = deployment.wait_job(job_id, lambda j: j["state"] == "succeeded", "the retry", 240)
        assert done["attempts"] == 2
        # Dropped once the job succeeded (the worker deletes them right after its final commit).
        wait_until(
            lambda: not layer_checkpoints(deployment, job_id), timeout=30, what="checkpoints gone"
        )
        messages = [event["message"] for event in deployment.events(job_id)]
        assert "gptq: resumed at layer 5 of 6 (4 restored from layer checkpoints)" in messages
        # The same job, never interrupted: the same tensors.
        clean_id = deployment.submit(gptq_job())["id"]
        deployment.wait_job(clean_id, lambda j: j["state"] == "succeeded", "the clean run", 240)
        resumed, clean = model_tensors(deployment, job_id), model_tensors(deployment, clean_id)
        assert resumed.keys() == clean.keys()
        for name, tensor in clean.items():
            assert (resumed[name] == tensor).all(), name
