"""Perplexity with a strided sliding window (the method of the transformers docs).

Each window sees up to `context_length` tokens; only the tokens not scored by an earlier window
count, so stride == context_length is the plain non-overlapping computation and a smaller stride
gives each scored token more left context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_mean: float
    scored_tokens: int
    windows: int


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids: list[int],
    *,
    context_length: int,
    stride: int,
    on_window: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    if len(token_ids) < 2:
        raise ValueError("need at least two tokens")
    device = next(model.parameters()).device
    ids = torch.tensor(token_ids, dtype=torch.long, device=device).unsqueeze(0)
    total = ids.shape[1]
    starts = list(range(0, total - 1, stride))
    nll_sum, scored, scored_until = 0.0, 0, 1  # token 0 has no context: never scored
    for index, begin in enumerate(starts):
        end = min(begin + context_length, total)
        window = ids[:, begin:end]
        logits = model(window).logits.float()
        # logits[t] predicts token t+1 of the window
        log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
        targets = window[0, 1:]
        first_new = max(scored_until, begin + 1) - (begin + 1)
        token_nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)[first_new:]
        nll_sum += float(token_nll.double().sum())
        scored += int(token_nll.numel())
        scored_until = end
        if on_window:
            on_window(index + 1, len(starts))
        if end == total:
            break
    mean = nll_sum / scored
    return PerplexityResult(math.exp(mean), mean, scored, index + 1)
