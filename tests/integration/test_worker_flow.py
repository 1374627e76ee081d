"""Submit over HTTP → a real Celery worker process → artifacts in S3 (moto over HTTP)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from tests.support.evaluation import perplexity_of
from tests.support.fixtures import BUCKET
from tests.support.jobs import TINY_EFFICIENCY, slow_job, tiny_job, wait_for_stage, wait_for_state
from tests.support.services import WorkerProcess, wait_until

pytestmark = pytest.mark.integration


def succeeded_with_files(
    api: TestClient, headers: dict, body: dict[str, Any], worker: WorkerProcess
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Submit, wait for the job to succeed, and list its artifacts by path."""
    job = api.post("/v1/jobs", json=body, headers=headers).json()
    done = wait_for_state(api, headers, job["id"], {"succeeded", "failed"}, worker=worker)
    assert done["state"] == "succeeded", done["error"]
    listing = api.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json()
    return job, {item["path"]: item for item in listing["items"]}


def test_job_runs_on_worker_and_publishes_verified_artifacts(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, settings: Settings, tmp_path: Path
) -> None:
    job = api.post("/v1/jobs", json=tiny_job(labels={"flow": "happy"}), headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, job["id"], {"succeeded", "failed"}, worker=worker)
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"] == 100 and done["attempts"] == 1
    assert done["metrics"]["compression_ratio"] > 1

    listing = api.get(f"/v1/jobs/{job['id']}/artifacts", headers=tenant_a).json()
    paths = {item["path"] for item in listing["items"]}
    assert {"model/config.json", "model/model.safetensors", "report.json", "recipe.json"} <= paths

    # The manifest is in the bucket and lists exactly the artifacts, with matching digests.
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    prefix = f"artifacts/jobs/{job['id']}/1"
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()
    )
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        i["path"]: i["sha256"] for i in listing["items"]
    }
    assert manifest["provenance"]["model"]["weights_sha256"]

    # Download every model file through its presigned URL and load it with plain transformers.
    model_dir = tmp_path / "downloaded"
    model_dir.mkdir()
    for item in listing["items"]:
        if item["path"].startswith("model/"):
            content = httpx.get(item["url"]).raise_for_status().content
            assert len(content) == item["size"]
            (model_dir / item["path"].removeprefix("model/")).write_bytes(content)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    measured = perplexity_of(model, model_dir, report["evaluation"])
    assert measured == pytest.approx(report["compressed"]["perplexity"], rel=1e-4)
    assert report["load_check"]["ok"] is True

    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json()["items"]
    assert [e["state"] for e in events if e["kind"] == "state"] == [
        "queued",
        "running",
        "succeeded",
    ]


def test_gptq_job_calibrates_on_the_jobs_calibration_spec(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    # Mixed precision through the API: down_proj stays at 8 bits, everything else 3-bit groups.
    params = {
        "bits": 3,
        "group_size": 32,
        "actorder": "static",
        "overrides": [{"targets": ["re:.*down_proj"], "bits": 8, "group_size": "channel"}],
    }
    body = tiny_job(
        recipe=[{"method": "gptq", "params": params}],
        calibration={"num_samples": 8, "max_seq_length": 64},
    )
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, job["id"], worker=worker)
    assert done["state"] == "succeeded", done["error"]
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    assert report["stages"] == [
        {
            "method": "gptq",
            "quantized_layers": 14,
            "layers_by_scheme": {"int3 g32 sym": 12, "int8 channel sym": 2},
            "scale_search": "minmax",
            # Each layer was checkpointed; a first attempt restores none.
            "layer_checkpoints": True,
            "resumed_layers": 0,
            "calibration_samples": 8,
            "calibration_tokens": 8 * 64,
        }
    ]
    assert report["model"]["weights_sha256"]
    # Bits on disk per quantized weight: between the 3-bit and 8-bit layers' own rates.
    assert 3.5 < report["summary"]["bits_per_quantized_weight"] < 8
    # The pre-job estimate is recorded beside the measured timings.
    assert "stage_0_gptq" in report["estimate"]["breakdown_s"]
    assert report["estimate"]["memory_bytes"] > 0
    assert 0 < report["timings_s"]["stage_0_gptq"] <= report["timings_s"]["stages"]
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json()["items"]
    assert any(e["message"] == "estimated resources" for e in events)
    [stage_event] = [e for e in events if e["kind"] == "stage"]
    assert stage_event["message"] == "stage 0 (gptq) done"


def test_invalid_group_size_fails_fast_with_layer_names(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    body = tiny_job(recipe=[{"method": "rtn", "params": {"bits": 4, "group_size": 256}}])
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, job["id"], {"succeeded", "failed"}, worker=worker)
    assert done["state"] == "failed" and done["attempts"] == 1
    assert done["error"]["code"] == "invalid_recipe"
    assert "does not divide" in done["error"]["message"]
    assert "valid group sizes: [16, 32, 64]" in done["error"]["message"]


def test_missing_model_path_fails_with_reason(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    job = api.post(
        "/v1/jobs", json=tiny_job(model={"kind": "local", "path": "nope"}), headers=tenant_a
    ).json()
    done = wait_for_state(api, tenant_a, job["id"], {"succeeded", "failed"}, worker=worker)
    assert done["state"] == "failed" and done["error"]["code"] == "invalid_model"


def test_cancel_running_job_frees_the_worker(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    job = api.post("/v1/jobs", json=slow_job(), headers=tenant_a).json()
    wait_for_stage(api, tenant_a, job["id"], "evaluate_original")
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant_a).json()["state"] == (
        "cancel_requested"
    )
    done = wait_for_state(
        api, tenant_a, job["id"], {"cancelled", "succeeded", "failed"}, timeout=30
    )
    assert done["state"] == "cancelled"
    # The same single-slot worker takes the next job.
    follow = api.post("/v1/jobs", json=tiny_job(), headers=tenant_a).json()
    assert (
        wait_for_state(api, tenant_a, follow["id"], {"succeeded", "failed"})["state"] == "succeeded"
    )


def test_killed_worker_job_is_retried_on_another_worker(
    api: TestClient, tenant_a: dict, start_worker: Any, settings: Settings
) -> None:
    # The gpu queue is read only by the workers this test starts; priority 9 puts the job ahead
    # of the jobs other tests parked there.
    first = start_worker()
    job = api.post("/v1/jobs", json=slow_job(device="gpu", priority=9), headers=tenant_a).json()
    wait_for_stage(api, tenant_a, job["id"], "evaluate_original")
    first.kill()
    second = start_worker()
    bound = settings.lease_ttl_s + settings.reaper_interval_s + 60  # + worker start-up
    try:
        retried = wait_until(
            lambda: (
                (j := api.get(f"/v1/jobs/{job['id']}", headers=tenant_a).json())["attempts"] == 2
                and j["state"] == "running"
                and j
            ),
            timeout=bound,
            what="job to be reclaimed by the second worker",
        )
    except TimeoutError:
        print(api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json())  # noqa: T201
        print(second.tail())  # noqa: T201
        raise
    assert retried["state"] == "running"
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json()["items"]
    assert any("stopped heartbeating" in e["message"] for e in events)
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant_a)
    assert wait_for_state(api, tenant_a, job["id"], {"cancelled"}, timeout=30, worker=second)


def test_a_model_over_max_shard_bytes_ships_in_verified_shards(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, settings: Settings, tmp_path: Path
) -> None:
    body = tiny_job(labels={"flow": "shards"})
    body["recipe"] = [{"method": "rtn", "params": {"bits": 8}}]
    body["output"] = {"max_shard_bytes": 2**16}  # the tiny model's int8 weights: several shards
    body["evaluation"] |= {"layer_error_tokens": 0}
    job, files = succeeded_with_files(api, tenant_a, body, worker)
    shards = sorted(p for p in files if p.startswith("model/") and p.endswith(".safetensors"))
    assert len(shards) >= 2 and "model/model.safetensors" not in files
    index = json.loads(httpx.get(files["model/model.safetensors.index.json"]["url"]).content)
    assert sorted({f"model/{name}" for name in index["weight_map"].values()}) == shards
    # Every shard is in the manifest with the digest of the bytes stored.
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"artifacts/jobs/{job['id']}/1/manifest.json")[
            "Body"
        ].read()
    )
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    model_dir = tmp_path / "sharded"
    model_dir.mkdir()
    for path, item in files.items():
        if path.startswith("model/"):
            content = httpx.get(item["url"]).raise_for_status().content
            assert hashlib.sha256(content).hexdigest() == digests[path] == item["sha256"]
            (model_dir / path.removeprefix("model/")).write_bytes(content)

    # The shards load with plain transformers and give the report's perplexity.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    assert report["compressed"]["weight_files"] == len(shards)
    measured = perplexity_of(model, model_dir, report["evaluation"])
    assert measured == pytest.approx(report["compressed"]["perplexity"], rel=1e-4)


def test_a_gguf_job_ships_one_gguf_file_that_transformers_loads(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, tiny_smol_dir: Path, tmp_path: Path
) -> None:
    body = tiny_job(labels={"flow": "gguf"}, model={"kind": "local", "path": tiny_smol_dir.name})
    body["recipe"] = [{"method": "gguf", "params": {"type": "Q8_0", "imatrix": False}}]
    body["evaluation"] |= {"layer_error_tokens": 0, "efficiency": TINY_EFFICIENCY}
    job, listed = succeeded_with_files(api, tenant_a, body, worker)
    files = {path: item for path, item in listed.items() if path.startswith("model/")}
    assert sorted(files) == ["model/model-Q8_0.gguf", "model/squash_format.json"]
    content = httpx.get(files["model/model-Q8_0.gguf"]["url"]).raise_for_status().content
    (tmp_path / "model-Q8_0.gguf").write_bytes(content)

    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    compressed = report["compressed"]
    assert compressed["checkpoint_bytes"] == len(content)
    assert compressed["quantized_storage"]["bits_per_weight"] == 8.5
    assert compressed["quantized_storage"]["tensor_types"] == {"Q8_0": 15}
    assert "gguf_file" in report["load_check"]["loader"]
    # The report's perplexity is the file's, as transformers reads it.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="model-Q8_0.gguf", dtype=torch.float32
    )
    measured = perplexity_of(model, tiny_smol_dir, report["evaluation"])
    assert measured == pytest.approx(compressed["perplexity"], rel=1e-4)
    # Speed in llama.cpp where the worker has it; otherwise transformers, and the report says
    # that is not the GGUF's runtime.
    efficiency = compressed["efficiency"]
    if importlib.util.find_spec("llama_cpp"):
        assert efficiency["runtime"] == "llama.cpp"
    else:
        assert efficiency["runtime"] == "transformers" and "llama.cpp" in efficiency["runtime_note"]


def test_gguf_files_beside_a_compressed_tensors_artifact_come_from_the_unquantized_model(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, tiny_smol_dir: Path, tmp_path: Path
) -> None:
    """Pruned, then RTN (compressed-tensors), with a Q8_0 GGUF beside it: the GGUF is converted
    from the pruned 16-bit model (its zeros are there), uploaded under gguf/ and measured."""
    from transformers import AutoModelForCausalLM

    body = tiny_job(
        labels={"flow": "gguf-beside"}, model={"kind": "local", "path": tiny_smol_dir.name}
    )
    body["recipe"] = [
        {"method": "magnitude", "params": {"sparsity": 0.5}},
        {"method": "rtn", "params": {"bits": 8}},
    ]
    body["output"] = {"gguf": [{"type": "Q8_0", "imatrix": False}]}
    body["evaluation"] |= {"layer_error_tokens": 0}
    job, files = succeeded_with_files(api, tenant_a, body, worker)
    assert any(p.startswith("model/") and p.endswith(".safetensors") for p in files)
    assert "gguf/model-Q8_0.gguf" in files
    content = httpx.get(files["gguf/model-Q8_0.gguf"]["url"]).raise_for_status().content
    assert hashlib.sha256(content).hexdigest() == files["gguf/model-Q8_0.gguf"]["sha256"]
    (tmp_path / "model-Q8_0.gguf").write_bytes(content)

    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    [row] = report["gguf_outputs"]
    assert row["path"] == "gguf/model-Q8_0.gguf" and row["bytes"] == len(content)
    assert row["tensor_types"] == {"Q8_0": 15}
    loaded = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="model-Q8_0.gguf", dtype=torch.float32
    )
    assert perplexity_of(loaded, tiny_smol_dir, report["evaluation"]) == pytest.approx(
        row["perplexity"], rel=1e-4
    )
    change = 100 * (row["perplexity"] / report["original"]["perplexity"] - 1)
    assert row["perplexity_change_pct"] == pytest.approx(change, abs=0.01)
    # Converted after the pruning stage: half of each pruned layer's weights are zero in it
    # (the input model has none), and Q8_0 keeps a zero a zero.
    pruned = loaded.model.layers[0].self_attn.q_proj.weight
    assert (pruned == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    page = httpx.get(files["report.html"]["url"]).raise_for_status().text
    assert 'id="gguf-outputs"' in page and "gguf/model-Q8_0.gguf" in page
