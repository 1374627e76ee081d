"""The pre-job resource estimate and the size measurements the report relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.recipes import DistillParams, GgufParams, GptqParams, MagnitudeParams, RtnParams
from workers.evaluation.measure import quantized_weight_storage, saved_checkpoint_bytes
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


def test_estimate_counts_calibration_work(model: torch.nn.Module) -> None:
    rtn = estimate(model, [("rtn", RtnParams())])
    gptq = estimate(model, [("gptq", GptqParams())])
    bigger = estimate(model, [("gptq", GptqParams())], samples=256)
    assert "stage_0_gptq" in gptq.breakdown_s and "stage_0_rtn" not in rtn.breakdown_s
    assert gptq.seconds > rtn.seconds > 0
    assert bigger.breakdown_s["stage_0_gptq"] > gptq.breakdown_s["stage_0_gptq"]
    assert gptq.device_gflops > 0


def test_estimate_counts_gguf_files_beside_the_artifact(model: torch.nn.Module) -> None:
    rtn = [("rtn", RtnParams())]
    alone = estimate(model, rtn)
    searched, plain = GgufParams(type="Q4_K_M"), GgufParams(type="Q8_0", imatrix=False)
    beside = estimate_job(
        model,
        rtn,
        calibration_samples=16,
        calibration_length=512,
        eval_tokens=4096,
        evaluate_original=True,
        device=torch.device("cpu"),
        dtype=torch.float32,
        extra_outputs=[("gguf", searched), ("gguf", plain)],
    )
    extra = {k: v for k, v in beside.breakdown_s.items() if k not in alone.breakdown_s}
    assert set(extra) == {"gguf_Q4_K_M", "gguf_Q8_0"}
    # Each: a load and a perplexity pass; the importance matrix adds its calibration pass and
    # a scale search over every weight.
    assert extra["gguf_Q8_0"] > beside.breakdown_s["evaluate"] / 2
    weights = sum(p.numel() for p in model.parameters())
    assert extra["gguf_Q4_K_M"] - extra["gguf_Q8_0"] > 0.7e-6 * weights
    assert beside.seconds == pytest.approx(sum(beside.breakdown_s.values()), abs=0.01)


def test_estimate_counts_training_work_and_its_cap(
    model: torch.nn.Module,
) -> None:
    sparse = ("magnitude", MagnitudeParams())
    short = estimate(model, [sparse, ("distill", DistillParams(max_steps=10))])
    long = estimate(model, [sparse, ("distill", DistillParams(max_steps=1000))])
    capped = DistillParams(max_steps=1000, max_seconds=0.5)
    bounded = estimate(model, [sparse, ("distill", capped)])
    assert long.breakdown_s["stage_1_distill"] > 50 * short.breakdown_s["stage_1_distill"]
    assert bounded.breakdown_s["stage_1_distill"] == 0.5

    # Teacher-written text is decoded before the training clock starts: on top of the cap, in
    # proportion to its tokens (each estimate probes the rate anew: a loose ratio).
    def written(sequences: int) -> float:
        writes = DistillParams(max_steps=1000, max_seconds=0.5, generated_sequences=sequences)
        return estimate(model, [sparse, ("distill", writes)]).breakdown_s["stage_1_distill"] - 0.5

    assert 0 < 20 * written(64) < written(64 * 100)
    assert "stage_0_magnitude" not in short.breakdown_s  # no calibration, no training


def test_bf16_size_of_a_float32_model_keeps_tied_weights_shared(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    measured = saved_checkpoint_bytes(model, torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is unchanged
    copy = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.bfloat16)
    copy.save_pretrained(tmp_path)
    assert measured == (tmp_path / "model.safetensors").stat().st_size
    assert quantized_weight_storage(tmp_path)["quantized_layers"] == 0


def test_estimate_counts_generation_and_the_serving_probe_within_its_budget(
    model: torch.nn.Module,
) -> None:
    from app.jobs.schemas import EfficiencySpec
    from workers.methods.estimate import EvaluationWork, artifact_decode_factor

    def with_serving(stages: list, **spec: object) -> Estimate:
        cpu = torch.device("cpu")
        work = EvaluationWork(
            prompts=3,
            max_new_tokens=16,
            efficiency=EfficiencySpec(**spec).model_dump(),  # type: ignore[arg-type]
            artifact_decode_factor=artifact_decode_factor(stages, cpu),
        )
        return estimate_job(
            model,
            stages,
            calibration_samples=0,
            calibration_length=0,
            eval_tokens=4096,
            evaluate_original=True,
            device=cpu,
            dtype=torch.float32,
            evaluation=work,
        )

    pruned = with_serving([("magnitude", MagnitudeParams())], max_seconds=None)
    quantized = with_serving([("rtn", RtnParams())], max_seconds=None)
    bounded = with_serving([("rtn", RtnParams())], max_seconds=1.0, repetitions=50)
    # A compressed-tensors artifact decodes slower in transformers on CPU: both counted.
    assert quantized.breakdown_s["generations"] > pruned.breakdown_s["generations"] > 0
    assert quantized.breakdown_s["efficiency"] > pruned.breakdown_s["efficiency"]
    # The time budget bounds the timed runs: two models, each process start + warm-up + ~budget.
    unbounded = with_serving([("rtn", RtnParams())], max_seconds=None, repetitions=50)
    assert bounded.breakdown_s["efficiency"] < unbounded.breakdown_s["efficiency"] / 3
