"""The pre-job resource estimate and the size measurements the report relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.recipes import DistillParams, GptqParams, MagnitudeParams, RtnParams
from workers.errors import JobFailure
from workers.evaluation.measure import quantized_weight_storage, saved_checkpoint_bytes
from workers.job.resources import check_memory
from workers.methods.estimate import Estimate, estimate_job


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def estimate(model: torch.nn.Module, stages: list, samples: int = 16) -> Estimate:
    return estimate_job(
        model,
        stages,
        calibration_samples=samples,
        calibration_length=512,
        eval_tokens=4096,
        evaluate_original=True,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def test_estimate_counts_calibration_work_and_memory(model: torch.nn.Module) -> None:
    rtn = estimate(model, [("rtn", RtnParams())])
    gptq = estimate(model, [("gptq", GptqParams())])
    bigger = estimate(model, [("gptq", GptqParams())], samples=256)
    assert "stage_0_gptq" in gptq.breakdown_s and "stage_0_rtn" not in rtn.breakdown_s
    assert gptq.seconds > rtn.seconds > 0
    assert bigger.breakdown_s["stage_0_gptq"] > gptq.breakdown_s["stage_0_gptq"]
    params = sum(p.numel() for p in model.parameters())
    assert rtn.memory_bytes >= 2 * 4 * params  # the model and its saved copy, in float32
    assert bigger.memory_bytes > gptq.memory_bytes  # cached calibration activations
    assert gptq.device_gflops > 0 and gptq.available_bytes and gptq.available_bytes > 0


def test_estimate_counts_training_work_its_cap_and_optimizer_memory(
    model: torch.nn.Module,
) -> None:
    rtn = estimate(model, [("rtn", RtnParams())])
    sparse = ("magnitude", MagnitudeParams())
    short = estimate(model, [sparse, ("distill", DistillParams(max_steps=10))])
    long = estimate(model, [sparse, ("distill", DistillParams(max_steps=1000))])
    capped = DistillParams(max_steps=1000, max_seconds=0.5)
    bounded = estimate(model, [sparse, ("distill", capped)])
    assert long.breakdown_s["stage_1_distill"] > 50 * short.breakdown_s["stage_1_distill"]
    assert bounded.breakdown_s["stage_1_distill"] == 0.5
    params = sum(p.numel() for p in model.parameters())
    assert short.memory_bytes >= rtn.memory_bytes + 4 * 4 * params


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_memory_check_refuses_clear_overcommit_and_warns_when_close() -> None:
    gib = 2**30
    ctx = Recorder()
    fits = Estimate(gib, 4 * gib, 1.0, 1.0, {})
    close = Estimate(5 * gib, 4 * gib, 1.0, 1.0, {})
    too_big = Estimate(7 * gib, 4 * gib, 1.0, 1.0, {})
    check_memory(ctx, fits)  # type: ignore[arg-type]
    assert ctx.warnings == []
    check_memory(ctx, close)  # type: ignore[arg-type]
    assert "5.0 GiB" in ctx.warnings[0]
    with pytest.raises(JobFailure, match=r"needs about 7.0 GiB .* 4.0 GiB available"):
        check_memory(ctx, too_big)  # type: ignore[arg-type]


def test_bf16_size_of_a_float32_model_keeps_tied_weights_shared(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    measured = saved_checkpoint_bytes(model, torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is unchanged
    copy = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.bfloat16)
    copy.save_pretrained(tmp_path)
    assert measured == (tmp_path / "model.safetensors").stat().st_size
    assert quantized_weight_storage(tmp_path)["quantized_layers"] == 0
