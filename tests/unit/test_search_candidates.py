"""A search's candidates under its budget, and the pick among what they measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from app.recipes import StageIn, validate_recipe
from app.search.spec import SearchSpec
from workers.formats.loader import load_pretrained
from workers.methods.quantization.common import VLLM_FAST_BITS, VLLM_FAST_GROUPS
from workers.methods.recipe import parse_stages, preflight
from workers.search.allocation import BudgetTooSmall
from workers.search.candidates import budget_bits, grid, plan_candidates
from workers.search.pick import Limits, choose, pareto_front
from workers.search.sensitivity import LayerScores, Setting, score_layers


def scored(settings: list[Setting]) -> list[LayerScores]:
    """Eight layers of two widths; the first two are 100x as fragile as the rest."""
    layers = []
    for index in range(8):
        in_features = 256 if index % 2 else 512
        row = LayerScores(f"model.layers.{index}.mlp.down_proj", 256 * in_features, in_features)
        weight = 100.0 if index < 2 else 1.0
        for s in settings:
            if s.fits(in_features):
                row.scores[s] = weight * 4.0 ** (-s.bits) * (1 + (s.group_size or 512) / 512)
        layers.append(row)
    return layers


def spec(**budget: Any) -> SearchSpec:
    return SearchSpec.model_validate({"budget": budget, "max_candidates": 8})


def settings_of(recipe: list[dict[str, Any]]) -> set[tuple[int, Any]]:
    params = next(stage["params"] for stage in recipe if stage["method"] == "gptq")
    found = {(params["bits"], params["group_size"])}
    found |= {(o["bits"], o["group_size"]) for o in params.get("overrides", [])}
    return found


def test_candidates_hold_the_budget_and_are_valid_recipes() -> None:
    layers = scored(grid("transformers"))
    candidates = plan_candidates(spec(max_bits_per_weight=4.25), layers, layers, 4.25)
    names = [c.name for c in candidates]
    assert names[:3] == [
        "rotate + allocated gptq imatrix <= 4.25 b/w",
        "allocated gptq <= 4.25 b/w",
        # W4 g64 is 4.25 bits plus each layer's stored shape: over the budget on the files.
        "uniform gptq W4 g128",
    ]
    # The front below the budget, as far as the cheapest setting (W2 g128 ~ 2.1 b/w) allows.
    assert names[3:] == [
        f"rotate + allocated gptq imatrix <= {b:g} b/w" for b in (3.75, 3.25, 2.75)
    ]
    for candidate in candidates:
        assert candidate.planned_bits <= candidate.budget_bits + 1e-9
        validate_recipe([StageIn.model_validate(stage) for stage in candidate.recipe])
    # The fragile layers get more bits than the rest.
    allocated = candidates[1].recipe[0]["params"]
    assert allocated["bits"] < 8 and any(o["bits"] == 8 for o in allocated["overrides"])
    assert spec(max_bits_per_weight=4.25).max_candidates == 8
    short = SearchSpec.model_validate({"budget": {"max_bits_per_weight": 4.25}})
    assert len(plan_candidates(short, layers, None, 4.25)) == short.max_candidates == 4


def test_vllm_target_keeps_to_the_fast_kernel_schemes() -> None:
    layers = scored(grid("vllm"))
    candidates = plan_candidates(
        spec(max_bits_per_weight=5.0, target_runtime="vllm"), layers, None, 5.0
    )
    assert len(candidates) >= 3
    fast = {(b, "channel" if g is None else g) for b in VLLM_FAST_BITS for g in VLLM_FAST_GROUPS}
    fast |= {(b, g) for b in VLLM_FAST_BITS for g in VLLM_FAST_GROUPS}
    for candidate in candidates:
        assert settings_of(candidate.recipe) <= fast, candidate.name
    # Too small for 4-bit channels: refused, not silently exceeded.
    with pytest.raises(BudgetTooSmall):
        plan_candidates(spec(max_bits_per_weight=3.5, target_runtime="vllm"), layers, None, 3.5)


def test_byte_budget_counts_the_unquantized_tensors_at_16_bits() -> None:
    layers = scored(grid("transformers"))
    quantized = sum(row.parameters for row in layers)
    other = 100_000
    size = 2 * other + 64 * 1024 + quantized * 4 // 8  # room for exactly 4 bits per weight
    bits = budget_bits(spec(max_checkpoint_bytes=size), layers, quantized + other)
    assert bits == pytest.approx(4.0, abs=1e-3)
    both = spec(max_checkpoint_bytes=size, max_bits_per_weight=3.5)
    assert budget_bits(both, layers, quantized + other) == 3.5
    with pytest.raises(BudgetTooSmall):
        budget_bits(spec(max_checkpoint_bytes=2**16), layers, quantized + other)


def row(name: str, bits: float, size: int, ppl: float | None, state: str = "succeeded") -> dict:
    change = None if ppl is None else round(100 * (ppl / 10.0 - 1), 3)
    return {
        "name": name,
        "state": state,
        "error": None if state == "succeeded" else "worker lost",
        "bits_per_quantized_weight": bits,
        "checkpoint_bytes": size,
        "perplexity": ppl,
        "change_pct": change,
    }


def test_pick_front_and_reasons() -> None:
    rows = [
        row("a", 4.25, 400, 10.5),  # +5 %
        row("b", 3.75, 350, 10.2),  # +2 %: smaller and better than a
        row("c", 3.25, 300, 11.0),  # +10 %
        row("d", 4.5, 420, 10.1),  # over the bits budget
        row("e", 2.75, 250, None, state="failed"),
    ]
    assert pareto_front(rows) == {1, 2, 3}
    winner, why = choose(rows, Limits(max_bits=4.25))
    assert winner == 1 and why == "the lowest perplexity within the budget"
    assert rows[3]["within_budget"] is False and "over 4.25" in rows[3]["excluded"]
    assert rows[4]["within_budget"] is None and rows[4]["excluded"] == "failed: worker lost"
    # Within a tolerance the smallest one wins.
    winner, why = choose(rows, Limits(max_bits=4.25, max_increase_pct=12))
    assert winner == 2 and "smallest candidate within +12 %" in why
    # No candidate within it: the best, saying so.
    winner, why = choose(rows, Limits(max_bits=4.25, max_increase_pct=1))
    assert winner == 1 and why.startswith("no candidate within +1 %")
    # A byte budget is read from the files too.
    winner, _ = choose(rows, Limits(max_bytes=320))
    assert winner == 2
    assert choose(rows, Limits(max_bits=2.0))[0] is None
    # A speed limit, on the speed each candidate measured: the faster one wins.
    for r, speed in zip(rows, (30.0, 20.0, 40.0, 50.0, None), strict=True):
        r["decode_tokens_per_second"] = speed
    winner, _ = choose(rows, Limits(max_bits=4.25, min_tokens_per_s=25))
    assert winner == 0 and "under 25" in rows[1]["excluded"]


def test_vllm_candidates_draw_no_kernel_warning_from_the_preflight(tiny_smol_dir: Path) -> None:
    """The rule as the preflight states it, on a real model: a `vllm` search's candidates get
    none of its scheme warnings (group size, bit width)."""
    torch.manual_seed(0)
    model = load_pretrained(tiny_smol_dir)
    samples = torch.randint(0, 1000, (2, 32)).tolist()
    layers = score_layers(model, samples, grid("vllm"))
    candidates = plan_candidates(
        spec(max_bits_per_weight=6.0, target_runtime="vllm"), layers, None, 6.0
    )
    assert len(candidates) >= 3
    for candidate in candidates:
        warnings = preflight(model, parse_stages(candidate.recipe))
        assert not [w for w in warnings if "fast INT4" in w or "no fast kernel" in w], warnings
    # The same check catches a scheme vLLM has no fast kernel for.
    odd = parse_stages([{"method": "gptq", "params": {"bits": 3, "group_size": 64}}])
    assert any("no fast kernel" in w for w in preflight(model, odd))


def test_candidates_are_measured_for_speed_only_when_the_budget_sets_one() -> None:
    from app.jobs.schemas import JobSpec
    from workers.search.children import child_spec, original_spec

    layers = scored(grid("transformers"))
    (candidate,) = plan_candidates(
        SearchSpec.model_validate({"budget": {"max_bits_per_weight": 4.25}, "max_candidates": 1}),
        layers,
        None,
        4.25,
    )

    def search(**budget: Any) -> JobSpec:
        return JobSpec.model_validate(
            {
                "kind": "search",
                "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
                "search": {"budget": {"max_bits_per_weight": 4.25, **budget}},
                "evaluation": {"max_tokens": 8192},
            }
        )

    plain = child_spec(search(), candidate)
    assert plain["kind"] == "compress" and plain["search"] is None
    assert plain["evaluation"]["efficiency"]["enabled"] is False
    assert plain["evaluation"]["max_tokens"] == 4096  # the candidates' short evaluation
    assert plain["recipe"][0]["params"]["bits"] == candidate.recipe[0]["params"]["bits"]
    timed = child_spec(search(min_decode_tokens_per_s=20.0), candidate)
    assert timed["evaluation"]["efficiency"]["enabled"] is True
    # The original's evaluation beside them is the search's full one.
    assert original_spec(search())["evaluation"]["max_tokens"] == 8192


def test_a_task_tolerance_picks_the_smallest_candidate_within_it() -> None:
    rows = [
        row("a", 4.25, 400, 10.5) | {"accuracy_drop": 0.01},
        row("b", 3.75, 350, 10.2) | {"accuracy_drop": 0.05},
        row("c", 3.25, 300, 11.0) | {"accuracy_drop": 0.02},
    ]
    limits = Limits(max_bits=4.25, max_accuracy_drop=0.02, accuracy_metric="mc.acc")
    winner, why = choose(rows, limits)
    assert winner == 2 and why.startswith("the smallest candidate within a 0.02 drop of mc.acc")
    # Both tolerances at once: c's +10 % perplexity is over 6 %, a holds both.
    both = Limits(max_bits=4.25, max_increase_pct=6, max_accuracy_drop=0.02, accuracy_metric="x")
    assert choose(rows, both)[0] == 0
    none = Limits(max_bits=4.25, max_accuracy_drop=0.001, accuracy_metric="mc.acc")
    winner, why = choose(rows, none)
    assert winner == 1 and why.startswith("no candidate within a 0.001 drop of mc.acc")


def smollm2_linears() -> tuple[list[LayerScores], int]:
    """SmolLM2-135M's decoder linears (30 layers, hidden 576, MLP 1536, 3 KV heads of 64) and
    its token embedding's size."""
    shapes = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576)}
    shapes |= {"gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}
    layers = [
        LayerScores(f"model.layers.{i}.{name}", rows * width, width)
        for i in range(30)
        for name, (rows, width) in shapes.items()
    ]
    return layers, 49152 * 576


def test_gguf_plan_matches_the_files_written_on_smollm2() -> None:
    """The plan against what the gguf stage wrote on SmolLM2 (bench/results/formats.json):
    exact for a 32-wide type, a lower bound for a k-quant preset (its mix raises some
    tensors); too small a budget fails up front, naming the fewest bits any type stores."""
    import json

    from workers.search.gguf_plan import gguf_candidates, planned_bits

    measured = json.loads((Path(__file__).parents[2] / "bench/results/formats.json").read_text())
    on_files = {row["type"]: row["bits_per_quantized_weight"] for row in measured["rows"]}
    layers, embedding = smollm2_linears()
    assert planned_bits("Q4_0", layers, embedding) == pytest.approx(on_files["Q4_0"], abs=1e-3)
    for preset in ("Q4_K_M", "Q3_K_M", "Q2_K_S"):
        assert planned_bits(preset, layers, embedding) <= on_files[preset]
    with pytest.raises(BudgetTooSmall, match=r"Q4_0, stores 5\.342"):
        gguf_candidates(spec(max_bits_per_weight=4.25), layers, embedding, 4.25)


def test_gguf_candidates_are_the_presets_within_the_budget() -> None:
    layers, embedding = smollm2_linears()
    candidates = gguf_candidates_at(6.0, layers, embedding)
    assert [c.name for c in candidates[:4]] == [
        "rotate + gguf Q4_K_M",
        "gguf Q4_K_M",
        "gguf Q4_K_M without imatrix",
        "gguf Q4_K_S",
    ]
    for candidate in candidates:
        assert candidate.planned_bits <= 6.0
        stages = validate_recipe([StageIn.model_validate(s) for s in candidate.recipe])
        assert stages[-1].method == "gguf"


def gguf_candidates_at(budget: float, layers: list[LayerScores], embedding: int) -> list[Any]:
    from workers.search.gguf_plan import gguf_candidates

    search = spec(max_bits_per_weight=budget, target_runtime="gguf")
    assert grid("gguf") == []  # no integer grid to allocate: llama.cpp's presets
    return gguf_candidates(search, layers, embedding, budget)


def test_pruning_adds_a_sparse_candidate_whose_storage_fits_the_budget() -> None:
    """SparseGPT 50 % + GPTQ: a mask bit and half the integers per weight, dense scales. At
    4.25 bits that is W4 g32 (3.5; W8 would store 5), at 3.25 W4 g128 (W4 g64's 3.25 plus
    the stored shapes is over)."""
    layers = scored(grid("transformers"))
    for budget, label in ((4.25, "W4 g32"), (3.25, "W4 g128")):
        search = SearchSpec.model_validate(
            {
                "budget": {"max_bits_per_weight": budget},
                "max_candidates": 8,
                "families": ["quantization", "pruning"],
            }
        )
        candidates = plan_candidates(search, layers, None, budget)
        (pruned,) = [c for c in candidates if c.recipe[0]["method"] == "sparsegpt"]
        assert pruned.name == f"sparsegpt 50% + gptq {label} mse"
        assert pruned.planned_bits <= budget
        stages = validate_recipe([StageIn.model_validate(s) for s in pruned.recipe])
        assert [s.method for s in stages] == ["sparsegpt", "gptq"]
    # Without the family, no sparse candidate.
    plain = plan_candidates(spec(max_bits_per_weight=4.25), layers, None, 4.25)
    assert not any(c.recipe[0]["method"] == "sparsegpt" for c in plain)
    # vLLM and llama.cpp do not serve these sparse artifacts: refused with the field named.
    with pytest.raises(ValidationError, match="pruning makes sparse artifacts vllm") as refused:
        SearchSpec.model_validate(
            {
                "budget": {"max_bits_per_weight": 4.25, "target_runtime": "vllm"},
                "families": ["quantization", "pruning"],
            }
        )
    assert refused.value.errors()[0]["loc"] == ("families",)
