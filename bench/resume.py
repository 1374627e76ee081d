"""GPTQ resume at real scale (issue 20): on the synthetic 1.1B Llama of bench/scale.py, a full
GPTQ W4 g128 stage with layer checkpoints, then a resumed one that finds the first 12 of 22
layers checkpointed (an attempt killed past half of its layers), side by side in one run:

    .venv/bin/python -m bench.resume        (~10 min, ~10 GB of RAM)

The stage runs in this process through the same modifier the worker uses
(`workers/methods/shared/layer_resume.py`); the kill and the retry through the service are
the fault suite's (`tests/faults/test_layer_resume.py`). Target: the resumed stage takes <= 0.6x
the full one and ends tensor-equal. Adds `resume_stage_time_ratio`, `resume_tensors_equal` and
a `resume` section to bench/results/scale.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from app.config import Settings
from app.recipes import GptqParams
from app.storage import LocalStore
from bench.common import write_results
from bench.scale import CALIBRATION, RESULTS, build_model
from tests.support.layerwise_runs import run_layerwise
from workers.methods.shared.layer_checkpoints import POINTER, LayerCheckpoints
from workers.models.datasets import builtin_text, split_tokens

PARAMS = GptqParams(bits=4, group_size=128, ignore=["lm_head"])
KEPT_LAYERS = 12  # of 22: the first attempt died past half of its layers
TARGET = 0.6


def calibration(model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    length, count = CALIBRATION["max_seq_length"], CALIBRATION["num_samples"]
    return [pool[i * length : (i + 1) * length] for i in range(count)]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="squash-resume-") as tmp:
        root = Path(tmp)
        model_dir = root / "synthetic-1b"
        build_model(model_dir)
        samples = calibration(model_dir)
        store = LocalStore(root / "store", Settings())

        def checkpoints(generation: int) -> LayerCheckpoints:
            scratch = root / f"scratch-{generation}"
            return LayerCheckpoints(store, "ck", scratch, generation=generation, fingerprint="f")

        full, saved, _, full_s = run_layerwise(model_dir, samples, PARAMS, checkpoints(1), {})
        print(f"full stage: {full_s:.1f} s, {len(saved)} layers checkpointed", flush=True)
        pointer = json.loads(store.get_bytes(f"ck/{POINTER}"))
        layers = len(pointer["layers"])
        pointer["layers"] = {k: v for k, v in pointer["layers"].items() if int(k) < KEPT_LAYERS}
        store.put_bytes(f"ck/{POINTER}", json.dumps(pointer).encode())
        second = checkpoints(2)
        restored, why = second.restore(layers)
        assert len(restored) == KEPT_LAYERS, why
        resumed, computed, _, resumed_s = run_layerwise(
            model_dir, samples, PARAMS, second, restored
        )
        equal = full.keys() == resumed.keys() and all(
            torch.equal(full[name], resumed[name]) for name in full
        )
        checkpoint_bytes = sum(f.stat().st_size for f in (root / "store").rglob("*.safetensors"))
    ratio = round(resumed_s / full_s, 3)
    print(
        f"resumed at layer {KEPT_LAYERS + 1} of {layers}: {resumed_s:.1f} s ({ratio}x), "
        f"computed layers {computed[0]}..{computed[-1]}, tensor-equal: {equal}"
    )
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # bench/scale.py's own failures stay; this bench's are replaced.
    kept = [f for f in results.pop("target_failures", []) if not f.startswith("resume")]
    results.update(
        {
            "resume_stage_time_ratio": ratio,
            "resume_tensors_equal": equal,
            "resume": {
                "recipe": "gptq W4 g128",
                "calibration": CALIBRATION,
                "layers": layers,
                "restored_layers": KEPT_LAYERS,
                "full_stage_seconds": round(full_s, 1),
                "resumed_stage_seconds": round(resumed_s, 1),
                "layer_checkpoint_bytes": checkpoint_bytes,
                "target_ratio": TARGET,
            },
        }
    )
    failures = [] if equal else ["resume: the artifact differs from the uninterrupted one"]
    if ratio > TARGET:
        failures.append(f"resume: the stage took {ratio}x the full one (target <= {TARGET}x)")
    failures = kept + failures
    write_results(RESULTS, results, failures)


if __name__ == "__main__":
    main()
