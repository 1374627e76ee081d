"""The search's quality core (issue 25) on SmolLM2-135M-Instruct: per-layer sensitivity, the
exact bits allocation under a budget, and the candidates it yields, against uniform GPTQ.

    .venv/bin/python -m bench.search        # ~25 min on 2 CPU cores

For each budget (4.25 and 3.25 average bits per quantized weight, as the files store them):
score every decoder Linear at W2/W3/W4/W8 x g32/g64 (Fisher-weighted rounding error,
`workers/search/sensitivity.py`, on 8 calibration samples), allocate exactly
(`workers/search/allocation.py`), and run the allocation as a GPTQ stage with per-layer
overrides through the worker's own stage and save code, then measure it as `bench.quality`
does (same corpora, calibration and evaluation tokens: in-domain held-out text and the Debian
license texts no recipe reads). Candidates per budget: the allocation with GPTQ's defaults
(what the allocation alone buys), and rotate + the allocation with the imatrix scale search
(computed on the rotated model). The pick is the candidate with the lowest in-domain
perplexity whose stored bits hold the budget. The uniform GPTQ rows (W4 g64, W3 g64) are read
from bench/results/quality.json when it was measured on the same original and corpora (the
figures are deterministic), else measured here.

Gap closed = (uniform - pick) / (uniform - original), in-domain perplexity. Targets: >= 40 % at
4.25 bits, >= 50 % at 3.25. Not measured yet: the fan-out across workers (the search job kind
and its child jobs are not built), so `fanout_wall_time_ratio` is null.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from app.recipes import GptqParams, MethodParams, RotateParams
from bench.common import RESULTS_DIR, write_results
from bench.quality import RESULTS as QUALITY_RESULTS
from bench.quality import (
    SECOND_CORPUS,
    SHAPE_BITS,
    Corpora,
    add_changes,
    run_row,
    smollm2_and_original,
)
from workers.methods.recipe import run_stages
from workers.search.allocation import allocate
from workers.search.recipe import stage_params
from workers.search.sensitivity import Setting, score_layers

RESULTS = RESULTS_DIR / "search.json"
SETTINGS = [Setting(bits, group) for bits in (2, 3, 4, 8) for group in (32, 64)]
# key -> (bits budget, the uniform row it must beat, share of that row's gap to close, %)
BUDGETS = {
    "4_25": (4.25, "baseline gptq w4 g64", 40.0),
    "3_25": (3.25, "baseline gptq w3 g64", 50.0),
}
FISHER_SAMPLES = 8
Recipe = list[tuple[str, MethodParams]]


def allocated_recipe(
    source: Path, tokenizer: Any, data: Corpora, budget: float, *, rotate: bool, scale_search: str
) -> tuple[Recipe, dict[str, Any]]:
    """The budget's allocation, scored on the model as the GPTQ stage will see it."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    before: Recipe = [("rotate", RotateParams())] if rotate else []
    if before:
        model = run_stages(model, tokenizer, before, data.calibration).model
    started = time.perf_counter()
    layers = score_layers(model, data.calibration[:FISHER_SAMPLES], SETTINGS)
    found = allocate(layers, budget)
    seconds = time.perf_counter() - started
    del model
    params = GptqParams.model_validate(stage_params(found, {"scale_search": scale_search}))
    mix: dict[str, int] = {}
    for setting in found.settings.values():
        mix[setting.label] = mix.get(setting.label, 0) + 1
    notes = {
        "allocated_bits_per_weight": found.bits_per_weight,
        "layers_per_setting": dict(sorted(mix.items())),
        "sensitivity_seconds": round(seconds, 1),
    }
    return [*before, ("gptq", params)], notes


def baselines(
    original: dict[str, float], data: Corpora, source: Path, tokenizer: Any
) -> dict[str, dict[str, Any]]:
    stored = json.loads(QUALITY_RESULTS.read_text()) if QUALITY_RESULTS.exists() else {}
    same = stored.get("original") == original
    found = {}
    for _, (_, name, _) in BUDGETS.items():
        rows = {r["variant"]: r for r in stored.get("rows", [])} if same else {}
        if name in rows:
            found[name] = rows[name] | {"from": "bench/results/quality.json (same original)"}
            continue
        params = GptqParams.model_validate({"bits": 4 if "w4" in name else 3, "group_size": 64})
        found[name] = run_row(name, [("gptq", params)], source, tokenizer, data)
        add_changes(found[name], original)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384, help="evaluation tokens per corpus")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--budgets", default=",".join(BUDGETS))
    args = parser.parse_args()
    source, tokenizer, data, original = smollm2_and_original(
        args.tokens, args.calibration_samples, 512
    )
    uniform = baselines(original, data, source, tokenizer)
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct",
        "original": original,
        "second_corpus": SECOND_CORPUS,
        "evaluation_tokens": args.tokens,
        "calibration": f"{args.calibration_samples} x 512 tokens of the built-in corpus",
        "settings": [s.label for s in SETTINGS],
        "fanout_wall_time_ratio": None,
        "baselines": list(uniform.values()),
        "candidates": [],
    }
    failures, held = [], []
    for key in args.budgets.split(","):
        budget, baseline, target = BUDGETS[key]
        picks = []
        for rotate, scale_search in ((False, "minmax"), (True, "imatrix")):
            name = f"{'rotate + ' if rotate else ''}allocated gptq {scale_search} <= {budget} b/w"
            recipe, notes = allocated_recipe(
                source, tokenizer, data, budget, rotate=rotate, scale_search=scale_search
            )
            row = run_row(name, recipe, source, tokenizer, data) | notes | {"budget": budget}
            add_changes(row, original)
            row["budget_held"] = row["bits_per_quantized_weight"] <= budget + SHAPE_BITS
            result["candidates"].append(row)
            picks.append(row)
            shown = ("variant", "perplexity", "change_pct", "bits_per_quantized_weight")
            print(json.dumps({k: row[k] for k in (*shown, "layers_per_setting")}), flush=True)
        within = [r for r in picks if r["budget_held"]]
        held.append(len(within) == len(picks))
        pick = min(within, key=lambda r: r["perplexity"]) if within else None
        base = uniform[baseline]["perplexity"]
        gap = (base - pick["perplexity"]) / (base - original["perplexity"]) if pick else 0.0
        result[f"gap_closed_at_{key}_bits"] = round(100 * gap, 1)
        result[f"pick_at_{key}_bits"] = pick["variant"] if pick else None
        if 100 * gap < target:
            failures.append(f"{key} bits: gap closed {100 * gap:.1f} % < {target} %")
    result["budget_held"] = all(held)
    if not result["budget_held"]:
        failures.append("a candidate's stored bits exceed its budget")
    write_results(RESULTS, result, failures)


if __name__ == "__main__":
    main()
