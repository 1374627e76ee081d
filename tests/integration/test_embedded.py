"""The embedded default: SQLite, filesystem broker, local object store, API + worker processes."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import torch

from app.cli.client import SquashClient
from app.cli.embedded import EmbeddedStack
from app.config import Settings
from app.storage import LocalStore
from tests.support.evaluation import perplexity_of
from tests.support.jobs import tiny_job
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def test_embedded_stack_runs_a_job_end_to_end(
    tmp_path: Path, models_root: Path, tiny_model_dir: Path
) -> None:
    stack = EmbeddedStack(
        tmp_path / "data", free_port(), extra_env={"MODEL_DIRS": json.dumps([str(models_root)])}
    )
    key = stack.start()
    try:
        assert (tmp_path / "data" / "api-key").read_text().strip() == key
        secret = (tmp_path / "data" / "secret-key").read_text().strip()
        assert secret != Settings().secret_key
        client = SquashClient(stack.url, key)
        job = client.wait(client.submit(tiny_job())["id"], timeout_s=240, poll_s=0.5)
        assert job["state"] == "succeeded", (
            job["error"],
            (stack.log_dir / "worker.log").read_text()[-3000:],
        )
        listing = client.artifacts(job["id"])
        model_dir = tmp_path / "downloaded"
        model_dir.mkdir()
        # A link signed with the published default key (what anyone could compute) is refused.
        forger = LocalStore(tmp_path / "data" / "objects", Settings(public_base_url=stack.url))
        for item in listing["items"]:
            # Signed links served by the API itself; tampering with the signature is refused.
            assert httpx.get(item["url"].replace("signature=", "signature=0")).status_code == 401
            stored = unquote(item["url"].split("/v1/files/", 1)[1].split("?", 1)[0])
            assert httpx.get(forger.presigned_url(stored, 600, "x")).status_code == 401
            if item["path"].startswith("model/"):
                content = httpx.get(item["url"]).raise_for_status().content
                (model_dir / item["path"].removeprefix("model/")).write_bytes(content)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = json.loads((model_dir / "config.json").read_text())
        assert config["quantization_config"]["format"] == "pack-quantized"
        assert model.config.quantization_config.is_quantization_compressed
        report = client.report(job["id"])
        measured = perplexity_of(model, model_dir, report["evaluation"])
        assert measured == pytest.approx(report["compressed"]["perplexity"], rel=1e-4)
        assert report["summary"]["compressed_checkpoint_bytes"] == next(
            i["size"] for i in listing["items"] if i["path"] == "model/model.safetensors"
        )
        # Restarting reuses the database and the key printed on first start.
        stack.stop()
        stack = EmbeddedStack(
            tmp_path / "data", stack.port, extra_env={"MODEL_DIRS": json.dumps([str(models_root)])}
        )
        assert stack.start() == key
        assert SquashClient(stack.url, key).get(job["id"])["state"] == "succeeded"
    finally:
        stack.stop()
