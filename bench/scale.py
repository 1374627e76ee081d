"""Memory of a job at real scale (issue 20): a synthetic ~1.1B Llama built on the spot (random
weights, TinyLlama's shape: hidden 2048, 22 layers, GQA 32/4 heads, vocab 32k; ~2.2 GB in bf16),
compressed through the service's API (embedded stack: API and Celery worker processes), beside
llm-compressor's own documented flow on the same model, in the same run.

    .venv/bin/python -m bench.scale                 # RTN W4 g128 and GPTQ W4 g128 (~25 min)
    .venv/bin/python -m bench.scale --only rtn

Every peak is counted above the RSS its process had once its libraries were imported (the
runtime is a fixed cost, not the model's): for the job, the report's `memory` section (peak RSS
of each phase, reset between phases, above the RSS at the job's start); for the library flow, a
fresh process that imports torch, transformers and llm-compressor, then loads the model in its
stored dtype, runs `oneshot` and saves compressed (the flow of llm-compressor's README).

The worker is given a memory budget below the model's bf16 size (WORKER_HOST_MEMORY_BYTES =
0.9x the checkpoint), so its plan cannot hold the model in memory and picks the disk-offloaded
mode (`app/planning/memory_plan.py`). Targets (issue 20): the job's peak over all phases <= 0.5x
the bf16 checkpoint and <= 0.5x the library flow's peak. Writes bench/results/scale.json,
keeping the offload and resume figures bench/offload_equivalence.py and bench/resume.py wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.embedded import EmbeddedStack
from bench.common import RESULTS_DIR, run_reported_job, write_results
from bench.distillation_quality import free_port

RESULTS = RESULTS_DIR / "scale.json"
SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
CALIBRATION = {"num_samples": 4, "max_seq_length": 256}
RECIPES = {
    "rtn": [{"method": "rtn", "params": {"bits": 4, "group_size": 128}}],
    "gptq": [{"method": "gptq", "params": {"bits": 4, "group_size": 128}}],
}


def build_model(target: Path, layers: int | None = None) -> tuple[int, int]:
    """Random weights in bfloat16 with a BPE tokenizer trained on the built-in corpus (`layers`
    shrinks the depth for a dry run of a bench's plumbing). Returns (parameters, bytes of the
    saved safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_model import train_tokenizer

    fast = train_tokenizer(4096)
    torch.manual_seed(0)
    config = LlamaConfig(
        **(SHAPE | ({"num_hidden_layers": layers} if layers else {})),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=0,
    )
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, sum(f.stat().st_size for f in target.glob("*.safetensors"))


def job_body(name: str) -> dict[str, Any]:
    return {
        "model": {"kind": "local", "path": "synthetic-1b"},
        "recipe": RECIPES[name],
        "calibration": CALIBRATION,
        # The job's default evaluation but for the serving probe (30 timed generations of a
        # 1.1B model on 2 CPU cores would take most of an hour) and a shorter perplexity.
        "evaluation": {"max_tokens": 2048, "efficiency": {"enabled": False}},
        "device": "cpu",
    }


def run_job(client: httpx.Client, name: str) -> dict[str, Any]:
    started = time.perf_counter()
    job, report = run_reported_job(client, name, job_body(name), poll_s=5)
    phases = report["memory"]["phases"]
    plan = report["memory"]["plan"]
    return {
        "job_id": job["id"],
        "job_seconds": round(time.perf_counter() - started, 1),
        "job_peak_rss_bytes": max(p["peak_above_start_bytes"] for p in phases.values()),
        "peak_reset_per_phase": report["memory"]["peak_reset_per_phase"],
        "phase_peak_rss_bytes": {k: p["peak_above_start_bytes"] for k, p in phases.items()},
        "phase_seconds": {k: report["timings_s"].get(k) for k in phases},
        # The plan made before the weights loaded (app/planning/memory_plan.py), per phase.
        "plan_mode": plan["mode"],
        "phase_planned_bytes": {k: plan["phases"][k]["host_bytes"] for k in phases},
        "estimate_memory_bytes": report["estimate"]["memory_bytes"],
        "compressed_checkpoint_bytes": report["compressed"]["checkpoint_bytes"],
    }


def library_flow(model_dir: Path, name: str) -> dict[str, Any]:
    """llm-compressor's documented flow in a fresh process (this module's --library-flow)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--library-flow", str(model_dir), name],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _library_flow_in_this_process(model_dir: Path, name: str) -> None:
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM

    from workers.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from workers.methods.shared.calibration import calibration_dataset

    imported = rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    kwargs: dict[str, Any] = {}
    if name == "gptq":
        recipe: Any = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
        generator = torch.Generator().manual_seed(0)
        samples = torch.randint(
            0,
            4096,
            (CALIBRATION["num_samples"], CALIBRATION["max_seq_length"]),
            generator=generator,
        ).tolist()
        kwargs = {
            "dataset": calibration_dataset(samples),
            "max_seq_length": CALIBRATION["max_seq_length"],
            "num_calibration_samples": CALIBRATION["num_samples"],
        }
    else:
        recipe = QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    oneshot(model=model, recipe=recipe, **kwargs)
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out, save_compressed=True)
    result = {
        "library_peak_rss_bytes": peak_rss_bytes() - imported,
        "library_seconds": round(time.perf_counter() - started, 1),
        "library_post_import_rss_bytes": imported,
    }
    print(json.dumps(result))


BUDGET_VS_BF16 = 0.9
KEPT_FIELDS = (  # written into scale.json by bench/resume.py and bench/offload_equivalence.py
    "resume_stage_time_ratio",
    "resume_tensors_equal",
    "offload_tensors_equal",
    "offload_wall_time_ratio",
)


def resume_figures() -> dict[str, Any]:
    """What bench/resume.py and bench/offload_equivalence.py wrote into the same file (their
    figures, and resume's failures)."""
    if not RESULTS.exists():
        return dict.fromkeys(KEPT_FIELDS)
    old = json.loads(RESULTS.read_text())
    figures = {k: old.get(k) for k in KEPT_FIELDS}
    if "resume" in old:
        figures["resume"] = old["resume"]
    failures = [f for f in old.get("target_failures", []) if f.startswith("resume")]
    return figures | ({"target_failures": failures} if failures else {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RECIPES))
    parser.add_argument("--library-flow", nargs=2, metavar=("MODEL_DIR", "RECIPE"))
    args = parser.parse_args()
    if args.library_flow:
        _library_flow_in_this_process(Path(args.library_flow[0]), args.library_flow[1])
        return
    names = [args.only] if args.only else list(RECIPES)
    with tempfile.TemporaryDirectory(prefix="squash-scale-") as tmp:
        models = Path(tmp) / "models"
        parameters, checkpoint = build_model(models / "synthetic-1b")
        print(f"synthetic model: {parameters:,} parameters, {checkpoint / 1e9:.2f} GB bf16")
        rows: dict[str, Any] = {}
        budget = int(BUDGET_VS_BF16 * checkpoint)
        print(f"worker memory budget: {budget / 1e9:.2f} GB ({BUDGET_VS_BF16}x bf16)")
        stack = EmbeddedStack(
            Path(tmp) / "stack",
            free_port(),
            extra_env={
                "MODEL_DIRS": json.dumps([str(models)]),
                "WORKER_HOST_MEMORY_BYTES": str(budget),
            },
        )
        key = stack.start()
        try:
            with httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as client:
                for name in names:
                    rows[name] = run_job(client, name)
        finally:
            stack.stop()
        for name in names:
            rows[name].update(library_flow(models / "synthetic-1b", name))
    for row in rows.values():
        row["job_peak_vs_bf16"] = round(row["job_peak_rss_bytes"] / checkpoint, 3)
        row["job_peak_vs_library"] = round(
            row["job_peak_rss_bytes"] / row["library_peak_rss_bytes"], 3
        )
        row["target_met"] = row["job_peak_vs_bf16"] <= 0.5 and row["job_peak_vs_library"] <= 0.5
    print(
        "\n| recipe | job peak | phase of the peak | library flow peak | job/bf16 | job/library |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        worst = max(row["phase_peak_rss_bytes"], key=row["phase_peak_rss_bytes"].get)
        print(
            f"| {name} | {row['job_peak_rss_bytes'] / 1e9:.2f} GB | {worst} | "
            f"{row['library_peak_rss_bytes'] / 1e9:.2f} GB | {row['job_peak_vs_bf16']} | "
            f"{row['job_peak_vs_library']} |"
        )
    print("\n| recipe | phase | measured peak | planned | planned/measured |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        for phase, measured in row["phase_peak_rss_bytes"].items():
            planned = row["phase_planned_bytes"][phase]
            print(
                f"| {name} | {phase} | {measured / 1e9:.2f} GB | {planned / 1e9:.2f} GB | "
                f"{planned / measured:.2f} |"
            )
    resume = resume_figures()
    resume_failures = resume.pop("target_failures", [])
    failures = [
        f"{name}: job peak {row['job_peak_vs_bf16']}x bf16, {row['job_peak_vs_library']}x the "
        "library flow (targets <= 0.5x each)"
        for name, row in rows.items()
        if not row["target_met"]
    ]
    write_results(
        RESULTS,
        {
            "model": {"shape": SHAPE, "weights": "random, bf16"},
            "parameters": parameters,
            "bf16_checkpoint_bytes": checkpoint,
            # The largest over the recipes run (each recipe's own figures are in `recipes`).
            "job_peak_rss_bytes": max(row["job_peak_rss_bytes"] for row in rows.values()),
            "library_peak_rss_bytes": max(row["library_peak_rss_bytes"] for row in rows.values()),
            "worker_host_memory_budget_bytes": budget,
            "targets": {"job_peak_vs_bf16": 0.5, "job_peak_vs_library": 0.5},
            "recipes": rows,
            # bench/resume.py's and bench/offload_equivalence.py's figures, kept.
            **resume,
        },
        failures + resume_failures,
    )


if __name__ == "__main__":
    main()
