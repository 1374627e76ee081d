"""Distillation as a long job on real Celery worker processes: progress while it trains, cancel
within a step with the student checkpointed, and a SIGKILLed worker's job resuming from its last
checkpoint to the weights an uninterrupted run ends with."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from tests.support.fixtures import BUCKET
from tests.support.jobs import tiny_job, wait_for_state
from tests.support.services import WorkerProcess, wait_until

pytestmark = pytest.mark.integration


def distill_job(max_steps: int, checkpoint_every: int, **overrides: Any) -> dict[str, Any]:
    """The trained tiny teacher, a derived student (1 of 2 layers, half the MLP), steps of
    16 x 256 tokens: long enough to interrupt, short enough for CI."""
    return tiny_job(
        model={"kind": "local", "path": "tiny-teacher"},
        recipe=[
            {
                "method": "distill",
                "params": {
                    "student": {"kind": "derived", "drop_layers": 1, "mlp_channels": 0.5},
                    "max_steps": max_steps,
                    "checkpoint_every": checkpoint_every,
                    "batch_size": 16,
                    "seq_length": 256,
                    "learning_rate": 1e-3,
                    "eval_tokens": 1024,
                },
            }
        ],
        calibration={"num_samples": 4, "max_seq_length": 64},
        **overrides,
    )


def model_weights(api: TestClient, headers: dict, job_id: str) -> dict[str, torch.Tensor]:
    listing = api.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json()
    (item,) = [i for i in listing["items"] if i["path"] == "model/model.safetensors"]
    from safetensors.torch import load

    return load(httpx.get(item["url"]).raise_for_status().content)


def test_progress_is_visible_and_cancel_stops_within_a_step(
    api: TestClient,
    tenant_a: dict,
    worker: WorkerProcess,
    settings: Settings,
    tiny_teacher_dir: Path,
) -> None:
    job = api.post("/v1/jobs", json=distill_job(100_000, 1_000_000), headers=tenant_a).json()
    seen = wait_until(
        lambda: (
            (j := api.get(f"/v1/jobs/{job['id']}", headers=tenant_a).json())["progress_detail"]
            and (j["progress_detail"].get("step") or 0) >= 3
            and j
        ),
        timeout=120,
        what="training progress",
    )
    detail = seen["progress_detail"]
    assert seen["stage"] == "stage:distill" and 35 <= seen["progress"] < 60
    assert detail["max_steps"] == 100_000 and detail["loss"] > 0
    assert detail["tokens_per_second"] > 0 and detail["eta_seconds"] > 0
    assert detail["checkpoint_step"] is None  # checkpoint_every is far away

    asked = time.monotonic()
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant_a)
    done = wait_for_state(
        api, tenant_a, job["id"], {"cancelled", "failed", "succeeded"}, timeout=60
    )
    took = time.monotonic() - asked
    assert done["state"] == "cancelled", done["error"]
    print(f"distillation cancel: {took:.2f} s to cancelled")  # noqa: T201
    assert took < 30

    # The student trained so far was checkpointed on the way out.
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    pointer = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"artifacts/checkpoints/{job['id']}/latest.json")[
            "Body"
        ].read()
    )
    assert pointer["state"]["step"] >= detail["step"] and pointer["state"]["done"] is False


def test_killed_worker_resumes_distillation_from_its_last_checkpoint(
    api: TestClient,
    tenant_a: dict,
    worker: WorkerProcess,
    start_worker: Any,
    settings: Settings,
    tiny_teacher_dir: Path,
) -> None:
    steps, every = 80, 20
    # The uninterrupted reference runs on the cpu-queue worker.
    reference = api.post("/v1/jobs", json=distill_job(steps, every), headers=tenant_a).json()

    # The interrupted run: gpu queue (nobody else reads it), priority 9, killed after its
    # first checkpoints.
    first = start_worker()
    body = distill_job(steps, every, device="gpu", priority=9)
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    seen = wait_until(
        lambda: (
            (d := api.get(f"/v1/jobs/{job['id']}", headers=tenant_a).json()["progress_detail"])
            and (d.get("checkpoint_step") or 0) >= every
            and d
        ),
        timeout=180,
        interval=0.1,
        what="a first checkpoint",
    )
    first.kill()
    killed_at = seen["step"]
    assert killed_at < steps, "training finished before the kill: make the steps slower"
    second = start_worker()
    done = wait_for_state(api, tenant_a, job["id"], timeout=240, worker=second)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2

    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    notes = report["stages"][0]
    resumed = notes["resumed_from_step"]
    assert resumed is not None and resumed % every == 0 and every <= resumed <= killed_at
    assert notes["steps"] == steps
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json()["items"]
    assert any(f"resumed from the checkpoint at step {resumed}" in e["message"] for e in events)

    ref_done = wait_for_state(api, tenant_a, reference["id"], timeout=240, worker=worker)
    assert ref_done["state"] == "succeeded", ref_done["error"]
    ref_notes = api.get(f"/v1/jobs/{reference['id']}/report", headers=tenant_a).json()
    ref_notes = ref_notes["stages"][0]
    assert ref_notes["resumed_from_step"] is None
    # Same seed, same data order, restored optimizer/schedule/RNG: the same training.
    assert notes["loss_curve"] == pytest.approx(ref_notes["loss_curve"], rel=1e-4, abs=1e-6)
    resumed_weights = model_weights(api, tenant_a, job["id"])
    reference_weights = model_weights(api, tenant_a, reference["id"])
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        # Stored in bfloat16: equal up to a rounding flip of float32 noise.
        assert torch.allclose(
            resumed_weights[name].float(), tensor.float(), rtol=1e-2, atol=1e-4
        ), name
    # Checkpoints serve retries only: gone once the job succeeded.
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    left = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"artifacts/checkpoints/{job['id']}/")
    assert left.get("KeyCount", 0) == 0
    print(  # noqa: T201
        f"distillation resume: killed at step {killed_at}, resumed from {resumed}, "
        f"{steps} steps in all"
    )


def test_another_model_as_student_needs_the_teachers_tokenizer(
    api: TestClient,
    tenant_a: dict,
    worker: WorkerProcess,
    models_root: Path,
    tiny_teacher_dir: Path,
) -> None:
    from tests.support.tiny_model import build_tiny_model

    build_tiny_model(models_root / "tiny-other-vocab", vocab_size=300)

    def job(student_path: str) -> dict[str, Any]:
        body = distill_job(3, 100)
        body["recipe"][0]["params"]["student"] = {
            "kind": "model",
            "model": {"kind": "local", "path": student_path},
        }
        return api.post("/v1/jobs", json=body, headers=tenant_a).json()

    same, other = job("tiny-llama"), job("tiny-other-vocab")
    done = wait_for_state(api, tenant_a, same["id"], worker=worker)
    assert done["state"] == "succeeded", done["error"]
    notes = api.get(f"/v1/jobs/{same['id']}/report", headers=tenant_a).json()["stages"][0]
    assert notes["student"] == "model" and notes["steps"] == 3
    # The random tiny-llama student is far from the trained teacher, and moves towards it.
    assert notes["kl_to_teacher_after"] < notes["kl_to_teacher_before"]
    refused = wait_for_state(api, tenant_a, other["id"], worker=worker)
    assert refused["state"] == "failed" and refused["error"]["code"] == "invalid_recipe"
    assert "vocabulary (300 tokens) differs" in refused["error"]["message"]


def test_reaper_drops_the_checkpoints_of_a_job_it_fails(
    api: TestClient, tenant_a: dict, settings: Settings
) -> None:
    """A job whose worker died on its last attempt ends `failed` by the reaper, and its training
    checkpoints (useless now) are deleted; other jobs' are untouched."""
    import uuid

    from sqlalchemy import update

    from app.db import session_scope
    from app.jobs import repository
    from app.jobs.models import Job
    from app.jobs.reaper import reap_once

    body = tiny_job(device="gpu", priority=0)  # parked: the gpu queue is read by test workers
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    job_id = uuid.UUID(job["id"])
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    other = uuid.uuid4()
    for owner in (job_id, other):
        for name in ("latest.json", "step-00000010-g1/student.safetensors"):
            s3.put_object(Bucket=BUCKET, Key=f"artifacts/checkpoints/{owner}/{name}", Body=b"x")
    with session_scope(settings.database_url) as session:
        # A worker that claims it on its last attempt and dies at once.
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
        assert repository.claim(session, job_id, worker_id="ghost", lease_ttl_s=0.1) == 1
    time.sleep(0.3)
    reap_once(settings)
    done = wait_for_state(api, tenant_a, job["id"], timeout=30)
    assert done["state"] == "failed" and done["error"]["code"] == "max_attempts_exceeded"
    # The API's own reaper thread may have won the job: it deletes the checkpoints just after
    # its move commits, so the state can read `failed` a moment before they are gone.
    deadline = time.monotonic() + 10
    while True:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="artifacts/checkpoints/")
        keys = {item["Key"] for item in listed.get("Contents", [])}
        if not any(str(job_id) in key for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(str(job_id) in key for key in keys)
    assert {f"artifacts/checkpoints/{other}/latest.json"} <= keys
