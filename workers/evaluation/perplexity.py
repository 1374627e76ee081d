"""Perplexity with a strided sliding window (the method of the transformers docs).

Each window sees up to `context_length` tokens; only the tokens not scored by an earlier window
count, so stride == context_length is the plain non-overlapping computation and a smaller stride
gives each scored token more left context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from workers.evaluation.layerwise import layerwise_logits


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
    layerwise: bool = False,
    on_layer: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """`layerwise`: all windows through the model one decoder layer at a time (a disk-offloaded
    model reads each weight once instead of once per window; `layerwise.py`), same figures."""
    if len(token_ids) < 2:
        raise ValueError("need at least two tokens")
    device = next(model.parameters()).device
    ids = torch.tensor(token_ids, dtype=torch.long, device=device).unsqueeze(0)
    total = ids.shape[1]
    spans: list[tuple[int, int]] = []
    for begin in range(0, total - 1, stride):
        spans.append((begin, min(begin + context_length, total)))
        if spans[-1][1] == total:
            break
    windows = [ids[:, begin:end] for begin, end in spans]
    if layerwise:
        all_logits: Iterator[torch.Tensor] = layerwise_logits(model, windows, on_layer)
    else:
        all_logits = (model(window).logits for window in windows)
    nll_sum, scored, scored_until = 0.0, 0, 1  # token 0 has no context: never scored
    for index, ((begin, end), window, raw) in enumerate(
        zip(spans, windows, all_logits, strict=True)
    ):
        logits = raw.float()
        # logits[t] predicts token t+1 of the window
        log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
        targets = window[0, 1:]
        first_new = max(scored_until, begin + 1) - (begin + 1)
        token_nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)[first_new:]
        nll_sum += float(token_nll.double().sum())
        scored += int(token_nll.numel())
        scored_until = end
        if on_window and not layerwise:  # layer-wise, progress is counted in layers
            on_window(index + 1, len(spans))
    mean = nll_sum / scored
    return PerplexityResult(math.exp(mean), mean, scored, len(spans))
