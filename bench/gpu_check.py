"""The GPU path of issue 20 on a lent CUDA machine (run through bench/gpu_check.sh): the
synthetic 1.1B Llama of bench/scale.py, built on the spot, compressed by RTN W4 and GPTQ W4
jobs through the embedded stack on a CUDA worker (`device: gpu`), in memory, then RTN once more
on a worker told to run disk-offloaded (WORKER_EXECUTION_MODE: one decoder layer on the GPU at
a time, onloaded from the checkpoint's files). Prints each phase's CUDA peak
(`torch.cuda.max_memory_allocated`) and host RSS peak beside the plan, and the wall time;
writes the figures to $OUT/scale-gpu.json (or bench/results/ when run here).

A dry run of the plumbing on a CPU machine, before spending device time:
    GPU_CHECK_DEVICE=cpu GPU_CHECK_LAYERS=2 .venv/bin/python -m bench.gpu_check
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.embedded import EmbeddedStack
from bench.common import RESULTS_DIR, run_reported_job
from bench.distillation_quality import free_port
from bench.scale import build_model, job_body

# Worker mode -> the recipes run on it (the offloaded run is RTN only: the GPU minutes are few).
RUNS = {"in_memory": ("rtn", "gptq"), "disk_offloaded": ("rtn",)}


def run_one(client: httpx.Client, name: str, device: str) -> dict[str, Any]:
    began = time.perf_counter()
    body = job_body(name) | {"device": device}
    _, report = run_reported_job(client, name, body, poll_s=2)
    memory, plan = report["memory"], report["memory"]["plan"]
    return {
        "seconds": round(time.perf_counter() - began, 1),
        "device": report["device_name"],
        "plan_mode": plan["mode"],
        "phases": {
            phase: {
                "cuda_peak_bytes": figures.get("cuda_peak_bytes"),
                "rss_peak_above_start_bytes": figures["peak_above_start_bytes"],
                "planned_device_bytes": plan["phases"][phase]["device_bytes"],
                "planned_host_bytes": plan["phases"][phase]["host_bytes"],
                "seconds": report["timings_s"].get(phase),
            }
            for phase, figures in memory["phases"].items()
        },
    }


def _print(rows: dict[str, Any]) -> None:
    for name, row in rows.items():
        print(f"\n{name} ({row['plan_mode']}) on {row['device']}: {row['seconds']} s")
        print("| phase | CUDA peak | planned (GPU) | host peak | planned (host) | seconds |")
        for phase, f in row["phases"].items():
            print(
                f"| {phase} | {(f['cuda_peak_bytes'] or 0) / 1e9:.2f} GB | "
                f"{f['planned_device_bytes'] / 1e9:.2f} GB | "
                f"{f['rss_peak_above_start_bytes'] / 1e9:.2f} GB | "
                f"{f['planned_host_bytes'] / 1e9:.2f} GB | {f['seconds']} |"
            )


def main() -> None:
    started = time.perf_counter()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="squash-gpu-") as tmp:
        models = Path(tmp) / "models"
        device = os.environ.get("GPU_CHECK_DEVICE", "gpu")
        layers = int(os.environ.get("GPU_CHECK_LAYERS") or 0) or None
        parameters, checkpoint = build_model(models / "synthetic-1b", layers)
        print(f"synthetic model: {parameters:,} parameters, {checkpoint / 1e9:.2f} GB bf16")
        for mode, names in RUNS.items():
            env = {"MODEL_DIRS": json.dumps([str(models)]), "WORKER_EXECUTION_MODE": mode}
            stack = EmbeddedStack(Path(tmp) / f"stack-{mode}", free_port(), extra_env=env)
            key = stack.start()
            try:
                headers = {"Authorization": f"Bearer {key}"}
                with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
                    for name in names:
                        rows[f"{name}/{mode}"] = run_one(client, name, device)
            finally:
                stack.stop()
    _print(rows)
    out = Path(os.environ.get("OUT") or RESULTS_DIR) / "scale-gpu.json"
    if device == "cpu":
        out = Path(tempfile.gettempdir()) / "scale-gpu-dry-run.json"  # a dry run: not a result
    result = {"parameters": parameters, "bf16_checkpoint_bytes": checkpoint, "recipes": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwall time {time.perf_counter() - started:.0f} s; figures in {out}")


if __name__ == "__main__":
    main()
