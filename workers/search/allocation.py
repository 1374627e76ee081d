"""Bits per layer under a budget: the exact multiple-choice knapsack.

Pick one setting per layer so that the summed sensitivity (`sensitivity.py`) is least while
the average bits per quantized weight, counted as the files store them (integer bits plus a
16-bit scale per group and each layer's stored shape: `Setting.layer_bits`), stays within the
budget. Solved exactly as a 0/1 integer program by
HiGHS through scipy (`scipy.optimize.milp`): a few hundred layers x a handful of settings
solve in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.search.sensitivity import LayerScores, Setting


class BudgetTooSmall(ValueError):
    """Even the cheapest setting of every layer is over the budget."""


@dataclass(frozen=True)
class Allocation:
    settings: dict[str, Setting]  # layer name -> its setting
    bits_per_weight: float  # the weighted average over the allocated layers
    score: float  # summed sensitivity of the choice


def allocate(layers: list[LayerScores], max_bits_per_weight: float) -> Allocation:
    from scipy.optimize import Bounds, LinearConstraint, milp

    choices = [(i, setting) for i, row in enumerate(layers) for setting in sorted(row.scores)]
    total = sum(row.parameters for row in layers)
    cheapest = sum(
        min(s.layer_bits(row.parameters, row.in_features) for s in row.scores) for row in layers
    )
    if cheapest > max_bits_per_weight * total + 1e-6:
        raise BudgetTooSmall(
            f"the cheapest settings already average {cheapest / total:.3f} bits per weight, "
            f"over the budget of {max_bits_per_weight}"
        )
    cost = np.array([layers[i].scores[s] for i, s in choices])
    # Scale the objective: scores span orders of magnitude, HiGHS' tolerances are absolute.
    cost = cost / max(float(np.abs(cost).max()), 1e-30)
    one_each = np.zeros((len(layers), len(choices)))
    for column, (i, _) in enumerate(choices):
        one_each[i, column] = 1.0
    share = [s.layer_bits(layers[i].parameters, layers[i].in_features) for i, s in choices]
    bits = np.array([share]) / total
    result = milp(
        c=cost,
        integrality=np.ones(len(choices)),
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(bits, -np.inf, max_bits_per_weight),
        ],
    )
    if not result.success:
        raise BudgetTooSmall(f"no allocation within {max_bits_per_weight} bits: {result.message}")
    picked = {
        layers[i].name: setting
        for (i, setting), x in zip(choices, result.x, strict=True)
        if x > 0.5
    }
    by_name = {row.name: row for row in layers}
    average = (
        sum(s.layer_bits(by_name[n].parameters, by_name[n].in_features) for n, s in picked.items())
        / total
    )
    score = sum(by_name[n].scores[s] for n, s in picked.items())
    return Allocation(picked, round(average, 4), score)
