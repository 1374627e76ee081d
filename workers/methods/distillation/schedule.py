"""The learning-rate schedule of a distill stage, over whichever budget binds first.

transformers' schedules decay over `max_steps` only: a stage bounded by `max_seconds` (with
`max_steps` set high so that time decides) kept its full learning rate to the end and never
annealed. Here the decay runs over the larger of the step fraction and the time fraction, so
a time-bounded stage ends at zero for cosine/linear; with no `max_seconds` the factors equal
transformers' `get_scheduler` ones (`constant` also honours `warmup_steps`, which
transformers' plain `constant` ignores). A time-bounded run is not reproducible step by step
anyway: where it stops already depends on the machine's speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from app.recipes import DistillParams


def budget_fraction(params: DistillParams, step: int, seconds: float) -> float:
    """How much of the stage's budget `step` steps taking `seconds` have used, in [0, 1]."""
    done = step / params.max_steps
    if params.max_seconds:
        done = max(done, seconds / params.max_seconds)
    return min(max(done, 0.0), 1.0)


def lr_factor(params: DistillParams, step: int, seconds: float) -> float:
    """The multiplier of the base learning rate for the step after `step` completed ones."""
    warmup = params.warmup_steps
    if step < warmup:
        return step / warmup
    if params.lr_schedule == "constant":
        return 1.0
    decayed = (step - warmup) / max(1, params.max_steps - warmup)
    if params.max_seconds:
        decayed = max(decayed, seconds / params.max_seconds)
    decayed = min(decayed, 1.0)
    if params.lr_schedule == "linear":
        return 1.0 - decayed
    return 0.5 * (1.0 + math.cos(math.pi * decayed))


def budget_scheduler(
    optimizer: torch.optim.Optimizer, params: DistillParams, seconds_used: Callable[[], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR (its state, the step count, checkpoints as transformers' did) whose factor
    also reads the training seconds used so far, through `seconds_used`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(params, step, seconds_used())
    )
