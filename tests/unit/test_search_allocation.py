"""Issue 25's core on a tiny trained Llama: Fisher-weighted sensitivity per layer and setting,
the exact allocation under a bits budget, and the recipe that carries it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.recipes import GptqParams
from workers.methods.shared.layers import matches, targeted_linears
from workers.models.datasets import builtin_text, split_tokens
from workers.search.allocation import BudgetTooSmall, allocate
from workers.search.recipe import stage_params
from workers.search.sensitivity import LayerScores, Setting, rounding_error, score_layers

SETTINGS = [Setting(2, 32), Setting(3, 32), Setting(4, 32), Setting(8, 32)]
CHANNEL = Setting(4)  # one scale per output channel: its bits per weight depend on the layer


@pytest.fixture(scope="module")
def scored(tiny_teacher_dir: Path) -> tuple[torch.nn.Module, list[list[int]], list[LayerScores]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    pool, held_out = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    samples = [pool[i : i + 128] for i in range(0, 128 * 8, 128)]
    evaluation = [held_out[i : i + 128] for i in range(0, 128 * 8, 128)]
    return model, evaluation, score_layers(model, samples, [*SETTINGS, CHANNEL])


def loss(model: torch.nn.Module, samples: list[list[int]]) -> float:
    with torch.no_grad():
        ids = torch.tensor(samples)
        return float(model(input_ids=ids, labels=ids).loss)


def test_coarser_grids_score_higher_and_the_score_ranks_real_damage(scored) -> None:
    model, evaluation, layers = scored
    assert len(layers) == 14  # 2 blocks x 7 linears, lm_head left out
    for row in layers:
        values = [row.scores[s] for s in SETTINGS]
        assert values == sorted(values, reverse=True), row.name
        assert values[-1] < values[0] / 50  # 8 bits is nearly free next to 2
    # Quantizing the most sensitive layer alone to 2 bits costs more loss than the least.
    ranked = sorted(layers, key=lambda row: row.scores[Setting(2, 32)])
    base = loss(model, evaluation)
    modules = dict(model.named_modules())
    damage = {}
    for row in (ranked[0], ranked[-1]):
        weight = modules[row.name].weight
        original = weight.detach().clone()
        with torch.no_grad():
            weight += rounding_error(weight, Setting(2, 32)).to(weight.dtype)
        damage[row.name] = loss(model, evaluation) - base
        with torch.no_grad():
            weight.copy_(original)
    assert damage[ranked[-1].name] > damage[ranked[0].name]
    assert loss(model, evaluation) == pytest.approx(base)  # the model is left as it was


def test_the_allocation_is_the_exact_optimum_within_the_budget() -> None:
    small, big = Setting(2, 32), Setting(4, 32)
    top = Setting(8, 32)
    layers = [
        LayerScores("a", 10_000, 64, {small: 9.0, big: 2.0, top: 0.1, CHANNEL: 2.5}),
        LayerScores("b", 30_000, 128, {small: 4.0, big: 1.0, top: 0.0, CHANNEL: 1.1}),
        LayerScores("c", 5_000, 64, {small: 30.0, big: 5.0, top: 1.0}),
    ]
    total = sum(row.parameters for row in layers)
    for budget in (2.52, 3.0, 4.2, 4.25, 5.0, 6.5, 8.5, 8.6):
        found = allocate(layers, budget)
        assert found.bits_per_weight <= budget + 1e-9
        best = min(
            sum(row.scores[s] for row, s in zip(layers, combo, strict=True))
            for combo in itertools.product(*(sorted(row.scores) for row in layers))
            if sum(
                s.layer_bits(row.parameters, row.in_features)  # the stored shape included
                for row, s in zip(layers, combo, strict=True)
            )
            <= budget * total + 1e-9
        )
        assert found.score == pytest.approx(best)
    # 8.5 bits and each layer's 128-bit shape: all at W8 g32 needs a little over 8.5.
    assert set(allocate(layers, 8.6).settings.values()) == {top}
    assert set(allocate(layers, 8.5).settings.values()) != {top}
    with pytest.raises(BudgetTooSmall):
        allocate(layers, 2.0)


def test_the_recipe_names_exactly_the_allocated_settings(scored) -> None:
    model, _, layers = scored
    found = allocate(layers, 3.6)
    assert 3.0 < found.bits_per_weight <= 3.6
    assert len(set(found.settings.values())) > 1  # a real mix at this budget
    params = GptqParams.model_validate(stage_params(found, {"dampening_frac": 0.01}))
    chosen = targeted_linears(model, list(params.targets), list(params.ignore))
    assert sorted(name for name, _ in chosen) == sorted(found.settings)
    for name, setting in found.settings.items():
        bits, group = params.bits, params.group_size  # None: one scale per output channel
        for override in params.overrides:  # the last matching override wins
            if matches(name, list(override.targets)):
                bits = override.bits
                if override.group_size is not None:
                    group = None if override.group_size == "channel" else override.group_size
        assert (bits, group) == (setting.bits, setting.group_size or None), name
