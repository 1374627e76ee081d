"""The disk-offloaded building block on the 1.1B synthetic Llama (bench/scale.py's model): peak
RSS of opening the model, one forward pass, RTN and GPTQ `oneshot`, for Squash's own offloaded
open (`workers/models/offloaded.py`: pointers into the checkpoint, no read) beside
compressed-tensors' `load_offloaded_model` (transformers `from_pretrained` with disk offload)
and a plain in-memory bf16 load, each in a fresh process, in one run; Squash's open once more
with glibc's mmap threshold fixed at 1 MiB (what the target is checked on: see MALLOC_FIXED).

    .venv/bin/python -m bench.offloaded_load        # ~10 min, ~3 GB

Every peak is above the process's RSS once torch, transformers and llm-compressor are imported.
Writes bench/results/offloaded_load.json. This is not the job's figure (scale.json's
`job_peak_rss_bytes`): the job does not run offloaded yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, write_results
from bench.scale import CALIBRATION, build_model

RESULTS = RESULTS_DIR / "offloaded_load.json"
LOADERS = ("squash_offloaded", "library_offloaded", "in_memory_bf16")
# glibc keeps freed blocks under its (growing) mmap threshold in the heap: an offloaded model
# allocates and frees one tensor after another, and RSS grows with what the heap keeps. A fixed
# threshold of 1 MiB returns every tensor's memory to the OS when it is freed.
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _open(loader: str, model_dir: Path, scratch: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if loader == "squash_offloaded":
        from workers.models.offloaded import open_offloaded

        return open_offloaded(model_dir, scratch, onload_device=torch.device("cpu"))
    if loader == "library_offloaded":
        from compressed_tensors.offload import load_offloaded_model

        with load_offloaded_model():
            return AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=torch.float32,
                device_map="auto_offload",
                max_memory={"cpu": 1},  # nothing fits: every weight goes to disk
                offload_folder=str(scratch),
            )
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)


def _in_this_process(loader: str, model_dir: Path, recipe: str) -> None:
    import llmcompressor  # noqa: F401 - imported before the baseline RSS
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    from workers.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from workers.methods.shared.calibration import calibration_dataset

    imported = rss_bytes()
    phases: dict[str, dict[str, float]] = {}

    def phase(name: str, work: Any) -> Any:
        reset_peak_rss()
        started = time.perf_counter()
        result = work()
        phases[name] = {
            "peak_rss_bytes": peak_rss_bytes() - imported,
            "seconds": round(time.perf_counter() - started, 2),
        }
        return result

    with tempfile.TemporaryDirectory(prefix="squash-offload-") as scratch:
        model = phase("open", lambda: _open(loader, model_dir, Path(scratch)))
        ids = torch.randint(0, 4000, (1, 512), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            phase("forward_512_tokens", lambda: model(ids).logits[0, -1, :2].tolist())
        if recipe == "gptq":
            samples = torch.randint(
                0,
                4000,
                (CALIBRATION["num_samples"], CALIBRATION["max_seq_length"]),
                generator=torch.Generator().manual_seed(0),
            ).tolist()
            modifier: Any = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
            kwargs: dict[str, Any] = {
                "dataset": calibration_dataset(samples),
                "max_seq_length": CALIBRATION["max_seq_length"],
                "num_calibration_samples": CALIBRATION["num_samples"],
                "shuffle_calibration_samples": False,
            }
        else:
            modifier = QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
            kwargs = {}
        phase(f"{recipe}_oneshot", lambda: oneshot(model=model, recipe=modifier, **kwargs))
    print(json.dumps({"post_import_rss_bytes": imported, "phases": phases}))


def run(loader: str, model_dir: Path, recipe: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.offloaded_load", "--child", loader, str(model_dir), recipe],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _in_this_process(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
        return
    recipes = sys.argv[1:] or ["rtn", "gptq"]
    with tempfile.TemporaryDirectory(prefix="squash-offload-bench-") as tmp:
        model_dir = Path(tmp) / "synthetic-1b"
        parameters, checkpoint = build_model(model_dir)
        rows: dict[str, Any] = {}
        for recipe in recipes:
            runs = [(loader, {}) for loader in LOADERS]
            runs.insert(1, ("squash_offloaded", MALLOC_FIXED))
            for loader, env in runs:
                if recipe == "gptq" and loader == "in_memory_bf16":
                    continue  # scale.json has the library's in-memory GPTQ flow
                name = f"{loader}{'+malloc_mmap_1MiB' if env else ''}/{recipe}"
                rows[name] = run(loader, model_dir, recipe, env)
                print(name, json.dumps(rows[name]), flush=True)
    # The job's target (issue 20) applied to each phase of the offloaded open: <= 0.5x bf16.
    failures = []
    for name, row in rows.items():
        if "failed" in row:
            failures.append(f"{name} failed: {row['failed']}")
        for phase, figures in row.get("phases", {}).items():
            figures["peak_vs_bf16"] = round(figures["peak_rss_bytes"] / checkpoint, 3)
            if name.startswith("squash_offloaded+") and figures["peak_vs_bf16"] > 0.5:
                failures.append(f"{name} {phase}: {figures['peak_vs_bf16']}x bf16 > 0.5x")
    write_results(
        RESULTS,
        {"parameters": parameters, "bf16_checkpoint_bytes": checkpoint, "runs": rows},
        failures,
    )


if __name__ == "__main__":
    main()
