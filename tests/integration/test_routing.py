"""Routing by size through the API: each job goes to the smallest declared pool whose memory
fits its plan (read from the model's config.json and headers), or is refused with the figures.
The 8B and 70B models are config files only: the API plans from them without any weight."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, WorkerPool
from app.main import create_app
from tests.support.jobs import TINY_EFFICIENCY, tiny_job, wait_for_state
from tests.support.services import WorkerProcess

CONFIGS = Path(__file__).parent.parent / "data" / "configs"
GB = 10**9
POOLS = (
    WorkerPool(queue="cpu-4g", device="cpu", host_memory_bytes=4 * GB),
    WorkerPool(queue="cpu-96g", device="cpu", host_memory_bytes=96 * GB),
    WorkerPool(queue="gpu-80g", device="gpu", device_memory_bytes=80 * GB),
    WorkerPool(queue="gpu-24g", device="gpu", device_memory_bytes=24 * GB),
)


@pytest.fixture(scope="module")
def pooled_api(settings: Settings, models_root: Path) -> Iterator[TestClient]:
    for name in ("llama-3.1-8b", "llama-3.1-70b"):
        folder = models_root / f"config-only-{name}"
        folder.mkdir(exist_ok=True)
        shutil.copy(CONFIGS / f"{name}.json", folder / "config.json")
    # Only the API: nobody consumes these queues, so every job stays queued where it was sent.
    quiet = {"reaper_enabled": False, "webhook_dispatch_enabled": False, "worker_pools": POOLS}
    with TestClient(create_app(settings.model_copy(update=quiet))) as client:
        yield client


@pytest.fixture
def auth(make_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key()}"}


def submit(api: TestClient, auth: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = api.post("/v1/jobs", json=tiny_job(**overrides), headers=auth)
    assert response.status_code == 202, response.text
    return dict(response.json())


def gptq(path: str, device: str) -> dict[str, Any]:
    return {
        "model": {"kind": "local", "path": path},
        "recipe": [{"method": "gptq", "params": {"bits": 4, "group_size": 128}}],
        "device": device,
    }


def test_jobs_go_to_the_smallest_pool_that_fits(
    pooled_api: TestClient, auth: dict[str, str]
) -> None:
    tiny = submit(pooled_api, auth, device="cpu")
    assert tiny["queue"] == "cpu-4g"
    # Its first event holds the plan that chose the pool, from the weight files' headers.
    events = pooled_api.get(f"/v1/jobs/{tiny['id']}/events", headers=auth).json()["items"]
    routed = events[0]["data"]
    assert routed["queue"] == "cpu-4g"
    plan = routed["memory_plan"]
    assert plan["fits"] and plan["mode"] == "in_memory" and plan["model"]["exact"]
    assert 0 < plan["host_peak_bytes"] < 4 * GB
    # 8B: 32 GB in float32 fits neither 4 GB of host memory nor a 24 GB GPU.
    assert submit(pooled_api, auth, **gptq("config-only-llama-3.1-8b", "cpu"))["queue"] == (
        "cpu-96g"
    )
    on_gpu = submit(pooled_api, auth, **gptq("config-only-llama-3.1-8b", "gpu"))
    assert on_gpu["queue"] == "gpu-80g"
    # A source the API cannot read before the worker downloads it: the device's largest pool.
    hub = {"kind": "huggingface", "repo_id": "org/model"}
    assert submit(pooled_api, auth, model=hub, device="gpu")["queue"] == "gpu-80g"


def test_a_job_no_pool_can_hold_is_refused_with_the_figures(
    pooled_api: TestClient, auth: dict[str, str]
) -> None:
    # SparseGPT has no disk-offloaded mode: a 70B model fits no GPU pool in memory.
    body = gptq("config-only-llama-3.1-70b", "gpu")
    body["recipe"] = [{"method": "sparsegpt", "params": {"sparsity": 0.5}}]
    response = pooled_api.post("/v1/jobs", json=tiny_job(**body), headers=auth)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "no_pool_fits"
    assert problem["errors"][0]["field"] == "model"
    for pool in ("gpu-24g", "gpu-80g"):
        assert f"{pool}: GPU memory" in problem["detail"]
    assert "GiB planned" in problem["detail"]
    listed = pooled_api.get("/v1/jobs", headers=auth).json()["items"]
    assert listed == []  # nothing was stored


def test_a_worker_refuses_before_loading_a_job_its_memory_cannot_hold(
    pooled_api: TestClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """The API's pool said 4 GB; this worker of that pool has 1 MB for a job (its own figure
    wins): the job fails `unsupported` with the figures, before any weight is loaded."""
    job = submit(pooled_api, auth, device="cpu")
    assert job["queue"] == "cpu-4g"
    small = settings.model_copy(update={"worker_pools": POOLS, "worker_host_memory_bytes": 2**20})
    worker = WorkerProcess(small, tmp_path / "small-worker.log", queues="cpu-4g")
    try:
        done = wait_for_state(pooled_api, auth, job["id"], worker=worker)
    finally:
        worker.kill()
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "unsupported"
    assert "host memory" in done["error"]["message"] and "> 1.0 MiB" in done["error"]["message"]
    events = pooled_api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    messages = [event["message"] for event in events]
    assert any(m.startswith("memory plan: ") for m in messages)
    assert not any(m.startswith("model loaded") for m in messages)  # refused before loading


def test_a_worker_told_to_offload_runs_the_job_disk_offloaded_to_the_same_artifact(
    pooled_api: TestClient,
    auth: dict[str, str],
    settings: Settings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """WORKER_EXECUTION_MODE=disk_offloaded: the job opens the model without loading it, saves
    module by module and load-checks by streamed decompression; its weight file is the one the
    in-memory save writes, byte for byte, and its reported perplexity is the artifact's."""
    import hashlib

    import httpx
    import torch
    from transformers import AutoModelForCausalLM

    from tests.support.evaluation import perplexity_of
    from workers.formats.loader import load_pretrained
    from workers.methods.recipe import parse_stages, run_stages, save_artifact

    # With the serving probe asked for: the offloaded job skips it, saying so.
    evaluation = tiny_job()["evaluation"] | {"efficiency": TINY_EFFICIENCY}
    job = submit(pooled_api, auth, device="cpu", evaluation=evaluation)
    offloading = settings.model_copy(
        update={"worker_pools": POOLS, "worker_execution_mode": "disk_offloaded"}
    )
    worker = WorkerProcess(offloading, tmp_path / "offloading-worker.log", queues="cpu-4g")
    try:
        done = wait_for_state(pooled_api, auth, job["id"], worker=worker)
    finally:
        worker.kill()
    assert done["state"] == "succeeded", done["error"]
    report = pooled_api.get(f"/v1/jobs/{job['id']}/report", headers=auth).json()
    assert report["memory"]["plan"]["mode"] == "disk_offloaded"
    assert "disk-offloaded" in report["load_check"]["loader"]
    events = pooled_api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    messages = [event["message"] for event in events]
    assert any(m.startswith("model opened disk-offloaded") for m in messages)
    assert any("serving efficiency skipped" in m for m in messages)

    listing = pooled_api.get(f"/v1/jobs/{job['id']}/artifacts", headers=auth).json()["items"]
    downloaded = tmp_path / "artifact"
    downloaded.mkdir()
    for item in listing:
        if item["path"].startswith("model/"):
            content = httpx.get(item["url"]).raise_for_status().content
            (downloaded / item["path"].removeprefix("model/")).write_bytes(content)
    # The same recipe in memory, in this process.
    body = tiny_job()
    outcome = run_stages(
        load_pretrained(tiny_model_dir).eval(), None, parse_stages(body["recipe"]), []
    )
    save_artifact(outcome, None, tmp_path / "in-memory")

    def digest(path: Path) -> str:
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    assert digest(downloaded) == digest(tmp_path / "in-memory")
    model = AutoModelForCausalLM.from_pretrained(downloaded, dtype=torch.float32)
    measured = perplexity_of(model, downloaded, report["evaluation"])
    assert measured == pytest.approx(report["compressed"]["perplexity"], rel=1e-6)
