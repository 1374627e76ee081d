"""The search's quality on SmolLM2-135M-Instruct (issue 25): the search job's own planner
(`workers/search/candidates.py`) under each budget, against uniform GPTQ.

    .venv/bin/python -m bench.search        # ~25 min on 2 CPU cores

Score every decoder Linear at the job's grid (W2/W3/W4/W8 x g32/g64/g128/per channel;
Fisher-weighted rounding error, `workers/search/sensitivity.py`, on 8 calibration samples), on
the model and on the rotated model, as a search job's first attempt does; then for each budget
(4.25 and 3.25 average bits per quantized weight, as the files store them, every scale and
stored shape counted) the job's first two candidates: rotate + the allocation with the imatrix
scale search, and the allocation with GPTQ's defaults. Each runs through the worker's own stage
and save code and is measured as `bench.quality` measures (same corpora, calibration and
evaluation tokens: in-domain held-out text and the Debian license texts no recipe reads). The
pick is the candidate with the lowest in-domain perplexity whose stored bits hold the budget,
the job's rule without a tolerance. The uniform GPTQ rows (W4 g64, W3 g64) are read from
bench/results/quality.json when it was measured on the same original and corpora (the figures
are deterministic), else measured here.

Gap closed = (uniform - pick) / (uniform - original), in-domain perplexity. Targets: >= 40 % at
4.25 bits, >= 50 % at 3.25. The fan-out across workers is `bench/search_fanout.py` (it writes
`fanout_wall_time_ratio` into the same file; kept when this bench rewrites it).
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
from app.search.spec import SearchSpec
from bench.common import RESULTS_DIR, write_results
from bench.quality import RESULTS as QUALITY_RESULTS
from bench.quality import (
    SECOND_CORPUS,
    Corpora,
    add_changes,
    run_row,
    smollm2_and_original,
)
from workers.methods.recipe import parse_stages, run_stages
from workers.search.candidates import grid, plan_candidates
from workers.search.pick import REPORTED_ROUNDING
from workers.search.sensitivity import LayerScores, score_layers

RESULTS = RESULTS_DIR / "search.json"
SETTINGS = grid("transformers")
# key -> (bits budget, the uniform row it must beat, share of that row's gap to close, %)
BUDGETS = {
    "4_25": (4.25, "baseline gptq w4 g64", 40.0),
    "3_25": (3.25, "baseline gptq w3 g64", 50.0),
}
FISHER_SAMPLES = 8
FANOUT_TARGET = 0.65  # bench/search_fanout.py
Recipe = list[tuple[str, MethodParams]]


def sensitivity(
    source: Path, tokenizer: Any, data: Corpora
) -> tuple[list[LayerScores], list[LayerScores], float]:
    """The scores on the model and on the rotated model, as a search's first attempt takes
    them; and the seconds they took."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    samples = data.calibration[:FISHER_SAMPLES]
    started = time.perf_counter()
    plain = score_layers(model, samples, SETTINGS)
    rotate: Recipe = [("rotate", RotateParams())]
    model = run_stages(model, tokenizer, rotate, samples).model
    rotated = score_layers(model, samples, SETTINGS)
    return plain, rotated, round(time.perf_counter() - started, 1)


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


def settings_mix(recipe: list[dict[str, Any]]) -> dict[str, int]:
    """How many layer patterns each setting has (the recipe names layers by pattern)."""
    gptq = next(stage["params"] for stage in recipe if stage["method"] == "gptq")
    mix = {f"W{gptq['bits']} {gptq['group_size'] or 'channel'} (the stage's)": 1}
    for override in gptq.get("overrides", []):
        mix[f"W{override['bits']} {override['group_size']}"] = len(override["targets"])
    return mix


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
    plain, rotated, scoring_seconds = sensitivity(source, tokenizer, data)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct",
        "original": original,
        "second_corpus": SECOND_CORPUS,
        "evaluation_tokens": args.tokens,
        "calibration": f"{args.calibration_samples} x 512 tokens of the built-in corpus",
        "settings": [s.label for s in SETTINGS],
        "sensitivity_seconds": scoring_seconds,
        # bench/search_fanout.py's figures, kept.
        "fanout_wall_time_ratio": kept.get("fanout_wall_time_ratio"),
        **({"fanout": kept["fanout"]} if "fanout" in kept else {}),
        "baselines": list(uniform.values()),
        "candidates": [],
    }
    failures, held = [], []
    for key in args.budgets.split(","):
        budget, baseline, target = BUDGETS[key]
        picks = []
        spec = SearchSpec.model_validate(
            {"budget": {"max_bits_per_weight": budget}, "max_candidates": 2}
        )
        for candidate in plan_candidates(spec, plain, rotated, budget):
            recipe = parse_stages(candidate.recipe)
            row = run_row(candidate.name, recipe, source, tokenizer, data)
            row |= {
                "budget": budget,
                "planned_bits": candidate.planned_bits,
                "layers_per_setting": settings_mix(candidate.recipe),
            }
            add_changes(row, original)
            row["budget_held"] = row["bits_per_quantized_weight"] <= budget + REPORTED_ROUNDING
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
    ratio = result["fanout_wall_time_ratio"]
    if ratio is not None and ratio > FANOUT_TARGET:  # bench/search_fanout.py's, kept
        failures.append(f"fan-out: 2 workers took {ratio}x the wall time of 1 (> {FANOUT_TARGET})")
    result["budget_held"] = all(held)
    if not result["budget_held"]:
        failures.append("a candidate's stored bits exceed its budget")
    write_results(RESULTS, result, failures)


if __name__ == "__main__":
    main()
