"""Are the report's latency figures stable? The serving measurement a job runs, twice.

    .venv/bin/python -m bench.latency_stability            # ~15 min on 2 CPU cores

SmolLM2-135M-Instruct as the original, and a structured variant (4 of 30 layers dropped by the
same code the `structured` stage runs: a model that really is faster), each measured by
`workers.evaluation.serving` with the settings to ask for when the figures will be published
(128-token prompt, 32 new tokens, batch 1 and batch 8, 2 warm-up and 30 timed runs with no time
budget, median and p90; a job's default is lighter: `EfficiencySpec`), in a fresh process per
measurement, exactly as a job does, two measurements per model.

Target (exits 1 if broken): the two measurements of each model differ by less than 10 % at
the median, for time to first token, decode ms/token at batch 1, and ms per decode step at
batch 8. Run it alone: other load on the machine is what makes latencies move.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from app.jobs.schemas import EfficiencySpec
from bench.common import RESULTS_DIR, smollm2_setup, write_results
from workers.evaluation.serving import measure_in_subprocess

RESULTS = RESULTS_DIR / "latency_stability.json"
TARGET = 0.10
# What a user asks for to publish latencies (the README's "evaluation" section says so).
SPEC = EfficiencySpec(
    new_tokens=32, batch_size=8, warmup=2, repetitions=30, max_seconds=None
).model_dump(exclude={"enabled"})
FIGURES = ("ttft_ms", "decode_ms_per_token_b1", "decode_ms_per_step_b8")


def structured_variant(setup: Any, target: Path) -> Path:
    from app.recipes.pruning import StructuredParams
    from workers.methods.shared.structured_pruning import measure_importance, prune

    model = setup.load_original()
    params = StructuredParams(layers=4)
    prune(model, measure_importance(model, setup.calibration), params)
    model.to(torch.bfloat16).save_pretrained(target)
    setup.tokenizer.save_pretrained(target)
    return target


def main() -> None:
    setup = smollm2_setup(tokens=512, samples=8, length=256)
    failures: list[str] = []
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "original": setup.model_path,
            "structured -4 layers": structured_variant(setup, Path(tmp) / "structured"),
        }
        for name, path in models.items():
            runs = [
                measure_in_subprocess(path, torch.device("cpu"), SPEC, timeout_s=1200)
                for _ in range(2)
            ]
            row: dict[str, Any] = {"runs": runs}
            for figure in FIGURES:
                first, second = (run[figure]["median"] for run in runs)
                diff = abs(second - first) / first
                row[figure] = {"median_run1": first, "median_run2": second, "difference": diff}
                print(f"{name:22} {figure:24} {first:9.2f} {second:9.2f} ms  diff {diff:6.1%}")
                if diff >= TARGET:
                    failures.append(f"{name} {figure}: runs differ by {diff:.1%} at the median")
            rows[name] = row
    write_results(RESULTS, {"spec": SPEC, "target_difference": TARGET, "models": rows}, failures)


if __name__ == "__main__":
    main()
