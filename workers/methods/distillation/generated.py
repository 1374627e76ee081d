"""Training text the teacher writes itself: data-free distillation as in LLM-QAT (Liu et al.
2023, section 2.1). Each sequence starts from a random vocabulary token, takes the teacher's top
token for the next GREEDY_HEAD, then samples the rest from its full distribution. Calibration
text is one domain; sampled text covers what the teacher would say anywhere, so a student
trained on both keeps more of the teacher outside the calibration domain.

transformers' `generate` does the decoding (KV cache, EOS suppression through
`min_new_tokens`). Draws are seeded, so a resumed job regenerates the same sequences and its
data order stays the one its checkpoint recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

GREEDY_HEAD = 3
# Sequences decoded together: bounded by tokens so the KV cache stays small at long seq_length.
TOKENS_PER_BATCH = 16_384


def teacher_sequences(
    teacher: Any,
    *,
    count: int,
    seq_length: int,
    seed: int,
    vocab_size: int,
    special_ids: list[int],
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """`count` sequences of exactly `seq_length` token ids (long, on the CPU)."""
    device = next(teacher.parameters()).device
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in special_ids if 0 <= i < vocab_size]] = False
    candidates = allowed.nonzero().squeeze(1)
    draw = torch.Generator().manual_seed(seed)
    firsts = candidates[torch.randint(len(candidates), (count,), generator=draw)]
    per_batch = max(1, TOKENS_PER_BATCH // seq_length)
    rows = []
    for start in range(0, count, per_batch):
        if check is not None:
            check()
        first = firsts[start : start + per_batch, None].to(device)
        rows.append(_write(teacher, first, seq_length, seed + start).cpu())
    return torch.cat(rows) if rows else torch.empty(0, seq_length, dtype=torch.long)


@torch.no_grad()
def _write(teacher: Any, first: torch.Tensor, seq_length: int, seed: int) -> torch.Tensor:
    """The teacher is frozen and in eval mode (distillation.models.load_teacher)."""
    head = min(GREEDY_HEAD, seq_length - 1)
    ids = teacher.generate(
        first,
        attention_mask=torch.ones_like(first),
        max_new_tokens=head,
        min_new_tokens=head,
        do_sample=False,
        pad_token_id=0,
    )
    rest = seq_length - ids.shape[1]
    if rest > 0:
        devices = [ids.device] if ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # keep the job's global RNG stream
            torch.manual_seed(seed)
            ids = sample_continuation(teacher, ids, rest, eos_token_id=None)
    result: torch.Tensor = ids[:, :seq_length]
    return result


def sample_continuation(
    model: Any, prompts: torch.Tensor, new_tokens: int, *, eos_token_id: int | None
) -> torch.Tensor:
    """`prompts` continued by exactly `new_tokens` tokens sampled from the model's full
    distribution (temperature 1; end-of-text suppressed by min_new_tokens, so every row keeps
    its length). generate() draws from the global RNG: the caller seeds it. Shared by GKD's
    on-policy batches and the teacher's own text."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    out: torch.Tensor = model.generate(
        input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=config
    )
    return out
