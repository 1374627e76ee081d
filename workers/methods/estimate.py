"""Before a job starts: how long it will take on this worker's device. (Its memory is the
plan's: `app/planning/memory_plan.py`, computed before the weights load.)

A first-order model, not a promise. Time = floating-point work / the matmul rate this device
reaches right now (probed with a few seconds' worth of float32/bfloat16 GEMMs, so a busy or slow
machine estimates slower). Work counted, from each stage's cost (`app/recipes/cost.py`):
- evaluation: a forward pass over the evaluation tokens, for the original and the compressed
  model (2 x non-embedding parameters x tokens, plus the lm_head);
- calibrated stages: llm-compressor's sequential pipeline runs every decoder layer twice per
  sample (calibrate, then propagate); GPTQ also accumulates each linear's Hessian
  (2 x tokens x in^2) and AWQ re-runs each smoothed block once per grid point;
- training stages (distill): per trained token a teacher forward and a student forward and
  backward (~3 forwards), i.e. 4 forwards, capped by the stage's wall-clock budget (GKD's
  sampling is not counted);
- generation (the report's side-by-side texts, the load check's, every serving run): decoding
  one token at batch 1 is not bound by arithmetic but by per-layer overhead (kernel launches,
  Python), measured at ~3.8 ms per decoder layer per token for transformers on a 2-core CPU
  (SmolLM2's 30 layers: 8.8 tokens/s), ~0.3 ms on a GPU; a compressed-tensors quantized model
  decodes ~3.5x slower still in transformers on CPU (its weights are unpacked in every
  forward: 2.8 tokens/s at INT8, 1.9 at INT4), a GGUF in llama.cpp ~10x faster;
- GGUF scale search (the importance matrix, `scale_search`): ~0.7 us per weight on a 2-core
  CPU (SmolLM2, 135M weights: 81-107 s per type); not yet measured on a GPU, assumed 10x less;
- GGUF files beside the artifact (`output.gguf`): each its stage's work, a load and one
  perplexity pass;
- serving efficiency: per model a fresh process (~6 s to import and load), the warm-up runs,
  then the timed runs up to the spec's `max_seconds` (at least 3 runs).

The report puts the estimate beside the measured timings, so its error is visible per job.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from app.recipes import MethodParams
from workers.evaluation.serving import MIN_TIMED_RUNS
from workers.models.hf import hf_config

PROBE_SIZE = 512
PROBE_SECONDS = 0.3
# Share of the probed GEMM rate a real forward pass reaches (attention, norms, activations,
# Python overhead). Measured on SmolLM2 on a 2-core CPU: without it the estimates were 1.7-2.3x
# under the measured times (GPTQ 32x512: 103 s estimated vs 179-227 s; AWQ 16x512, n_grid 10:
# 164 s vs 350-370 s; two 16k-token evaluations: ~75 s vs ~180 s).
EFFICIENCY = 0.5
DECODE_S_PER_LAYER = {"cpu": 0.0038, "cuda": 0.0003}
SLOWER_DECODE_IN_TRANSFORMERS_CPU = 3.5  # compressed-tensors quantized artifacts
FASTER_DECODE_IN_LLAMA_CPP = 0.1
PROCESS_START_S = 6.0
SCALE_SEARCH_S_PER_WEIGHT = {"cpu": 0.7e-6, "cuda": 0.07e-6}
# A distill stage's teacher-written text costs this many forward passes' work per token
# (one-token decode steps at batch 64): SmolLM2 generated 169 tokens/s on a 2-core CPU
# against ~500 tokens/s through a batched forward pass.
GENERATION_COST = 3.0


@dataclass(frozen=True)
class EvaluationWork:
    """What the job's evaluation generates, beside the perplexity tokens."""

    prompts: int = 0
    max_new_tokens: int = 0
    efficiency: dict[str, Any] | None = None  # the job's EfficiencySpec (None: disabled)
    compare_original: bool = True
    artifact_decode_factor: float = 1.0  # how much slower the artifact decodes than the input


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int | None
    available_bytes: int | None
    seconds: float
    device_gflops: float
    breakdown_s: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> float:
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device, dtype=dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device, dtype=dtype)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < PROBE_SECONDS:
        a @ b
        runs += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * PROBE_SIZE**3 * runs / (time.perf_counter() - started)


def available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else None


def _evaluation_breakdown(
    work: EvaluationWork,
    config: Any,
    stages: list[tuple[str, MethodParams]],
    evaluate_original: bool,
    device: torch.device,
    token_flops_s: float,
) -> dict[str, float]:
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    per_token = max(token_flops_s, DECODE_S_PER_LAYER.get(device.type, 0.0038) * layers)
    # The models generated from: the original (if compared), the artifact (if any).
    factors = [1.0] * (evaluate_original and work.compare_original) + [
        work.artifact_decode_factor
    ] * bool(stages)
    generated = work.prompts * work.max_new_tokens
    found = {"generations": sum(generated * per_token * f for f in factors)}
    if work.efficiency is not None:
        found["efficiency"] = sum(
            serving_seconds(work.efficiency, per_token * f, token_flops_s) for f in factors
        )
    return found


def serving_seconds(spec: dict[str, Any], token_s: float, prefill_token_s: float) -> float:
    """One model's serving probe: process start, warm-up, timed runs up to the budget (each
    run: the prompt and new tokens at batch 1, then at the larger batch, whose decode step
    costs about the same per step on a CPU's overhead-bound decode)."""
    batch = int(spec.get("batch_size", 1))
    prompt, new = int(spec["prompt_tokens"]), int(spec["new_tokens"])
    per_run = prompt * (1 + batch) * prefill_token_s + 2 * new * token_s
    repetitions = int(spec["repetitions"])
    timed = repetitions * per_run
    budget = spec.get("max_seconds")
    if budget is not None:
        timed = min(timed, max(float(budget) + per_run, min(MIN_TIMED_RUNS, repetitions) * per_run))
    return PROCESS_START_S + int(spec["warmup"]) * per_run + timed


def artifact_decode_factor(stages: list[tuple[str, MethodParams]], device: torch.device) -> float:
    """How much slower (or faster) the artifact decodes than the input model, in the runtime
    the job measures it in."""
    from app.recipes import METHODS
    from workers.evaluation import serving_llama_cpp

    quantizers = [name for name, _ in stages if METHODS[name].kind == "quantization"]
    if not quantizers:
        return 1.0
    if quantizers[-1] == "gguf":
        return FASTER_DECODE_IN_LLAMA_CPP if serving_llama_cpp.available() else 1.0
    return SLOWER_DECODE_IN_TRANSFORMERS_CPU if device.type == "cpu" else 1.0


def _decoder_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    output_embeddings = getattr(model, "get_output_embeddings", None)
    head = output_embeddings() if output_embeddings is not None else None
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def estimate_job(
    model: torch.nn.Module,
    stages: list[tuple[str, MethodParams]],
    *,
    calibration_samples: int,
    calibration_length: int,
    eval_tokens: int,
    evaluate_original: bool,
    device: torch.device,
    dtype: torch.dtype,
    memory_bytes: int | None = None,
    available_bytes: int | None = None,
    evaluation: EvaluationWork | None = None,
    extra_outputs: list[tuple[str, MethodParams]] | None = None,
) -> Estimate:
    """The job's time; `memory_bytes` / `available_bytes` are the memory plan's peak and
    budget, carried into the report beside it."""
    config = hf_config(model)
    hidden = int(config.hidden_size)
    vocab = int(getattr(config, "vocab_size", 0))
    linears = _decoder_linears(model)
    body_params = sum(m.weight.numel() for m in linears)
    rate = EFFICIENCY * matmul_flops_per_second(device, dtype)

    def forward_flops(tokens: int) -> float:
        return 2.0 * (body_params + hidden * vocab) * tokens

    breakdown: dict[str, float] = {}
    passes = 2 if evaluate_original else 1
    breakdown["evaluate"] = forward_flops(eval_tokens) * passes / rate
    if evaluation is not None:
        breakdown.update(
            _evaluation_breakdown(
                evaluation, config, stages, evaluate_original, device, forward_flops(1) / rate
            )
        )

    calibration_tokens = calibration_samples * calibration_length
    all_params = sum(p.numel() for p in model.parameters())
    work_items = [(f"stage_{i}_{name}", p) for i, (name, p) in enumerate(stages)]
    for name, stage_params in extra_outputs or []:
        # Each file beside the artifact: a fresh load, its stage, one perplexity pass.
        work_items.append((f"{name}_{getattr(stage_params, 'type', '')}", stage_params))
        breakdown[work_items[-1][0]] = PROCESS_START_S + forward_flops(eval_tokens) / rate
    for key, stage_params in work_items:
        cost = stage_params.cost()
        seconds = breakdown.pop(key, 0.0)
        if cost.scale_search:
            seconds += SCALE_SEARCH_S_PER_WEIGHT.get(device.type, 0.7e-6) * all_params
        if cost.calibrated:
            work = cost.calibration_passes * 2.0 * body_params * calibration_tokens
            if cost.hessians:
                work += sum(2.0 * calibration_tokens * m.in_features**2 for m in linears)
            seconds += work / rate
        if cost.generated_tokens:
            seconds += GENERATION_COST * forward_flops(cost.generated_tokens) / rate
        if cost.trains:
            training = 4 * forward_flops(cost.training_tokens) / rate
            seconds += min(training, cost.max_seconds) if cost.max_seconds else training
        if seconds:
            breakdown[key] = seconds
    return Estimate(
        memory_bytes=memory_bytes,
        available_bytes=available_bytes,
        seconds=round(sum(breakdown.values()), 3),
        device_gflops=round(rate / EFFICIENCY / 1e9, 1),
        breakdown_s={k: round(v, 3) for k, v in breakdown.items()},
    )
