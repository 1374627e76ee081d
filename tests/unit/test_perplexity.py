"""Our sliding-window perplexity against plain transformers forward passes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.evaluation.perplexity import perplexity


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 500, (1000,), generator=generator).tolist()


def hf_loss(model: torch.nn.Module, ids: list[int]) -> tuple[float, int]:
    """transformers' own loss (mean NLL over len-1 targets) for one window."""
    tensor = torch.tensor([ids])
    with torch.no_grad():
        loss = model(tensor, labels=tensor).loss
    return float(loss) * (len(ids) - 1), len(ids) - 1


def test_stride_equal_to_context_is_the_non_overlapping_computation(model, tokens) -> None:
    result = perplexity(model, tokens, context_length=128, stride=128)
    nll, count = 0.0, 0
    for start in range(0, len(tokens), 128):
        chunk = tokens[start : start + 128]
        if len(chunk) > 1:
            part, n = hf_loss(model, chunk)
            nll, count = nll + part, count + n
    assert result.scored_tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_single_window_matches_transformers_loss(model, tokens) -> None:
    ids = tokens[:256]
    result = perplexity(model, ids, context_length=256, stride=256)
    nll, count = hf_loss(model, ids)
    assert result.windows == 1 and result.scored_tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sliding_window_scores_each_token_once(model, tokens) -> None:
    result = perplexity(model, tokens, context_length=128, stride=32)
    assert result.scored_tokens == len(tokens) - 1
    # Independent: score token t with up to 127 tokens of left context, one pass per stride.
    nll = 0.0
    scored_until = 1
    for begin in range(0, len(tokens) - 1, 32):
        end = min(begin + 128, len(tokens))
        with torch.no_grad():
            logits = model(torch.tensor([tokens[begin:end]])).logits[0]
        for pos in range(max(scored_until, begin + 1), end):
            nll -= float(torch.log_softmax(logits[pos - 1 - begin], -1)[tokens[pos]])
        scored_until = end
        if end == len(tokens):
            break
    assert result.perplexity == pytest.approx(math.exp(nll / (len(tokens) - 1)), rel=1e-4)
