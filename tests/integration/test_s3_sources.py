"""Model and dataset sources read from S3 (moto over HTTP) by the worker."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.support.fixtures import BUCKET
from tests.support.jobs import tiny_job, wait_for_state
from tests.support.services import WorkerProcess

pytestmark = pytest.mark.integration


def test_model_and_jsonl_dataset_from_s3(
    api: TestClient,
    tenant_a: dict,
    worker: WorkerProcess,
    settings: Settings,
    tiny_model_dir: Path,
) -> None:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    for file in tiny_model_dir.iterdir():
        s3.upload_file(str(file), BUCKET, f"models/tiny/{file.name}")
    # A pickle beside the safetensors must never be fetched.
    s3.put_object(Bucket=BUCKET, Key="models/tiny/pytorch_model.bin", Body=b"pickle")
    lines = [
        json.dumps({"text": f"def function_{i}(x):\n    return x * {i}\n"}) for i in range(400)
    ]
    s3.put_object(Bucket=BUCKET, Key="data/eval.jsonl", Body="\n".join(lines).encode())

    body = tiny_job(
        model={"kind": "s3", "uri": f"s3://{BUCKET}/models/tiny"},
        evaluation={
            "dataset": {"kind": "s3", "uri": f"s3://{BUCKET}/data/eval.jsonl", "format": "jsonl"},
            "max_tokens": 1024,
            "context_length": 128,
            "prompts": ["x"],
            "max_new_tokens": 2,
        },
    )
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, job["id"], worker=worker)
    assert done["state"] == "succeeded", (done["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    assert report["evaluation"]["dataset"] == f"s3://{BUCKET}/data/eval.jsonl"
    assert report["model"]["source"]["kind"] == "s3"


def test_bad_jsonl_dataset_fails_with_data_error(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, settings: Settings
) -> None:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    s3.put_object(Bucket=BUCKET, Key="data/bad.jsonl", Body=b'{"body": "no text field"}\n')
    body = tiny_job(
        evaluation={
            "dataset": {"kind": "s3", "uri": f"s3://{BUCKET}/data/bad.jsonl", "format": "jsonl"}
        }
    )
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, job["id"], worker=worker)
    assert done["state"] == "failed" and done["error"]["code"] == "data_error"
    assert "'text'" in done["error"]["message"]
