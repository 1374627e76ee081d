"""Training sequences and a batch order that depends only on (seed, step): a resumed run reads
exactly the batches the interrupted one would have read next."""

from __future__ import annotations

import torch


def pack(token_ids: list[int], seq_length: int) -> torch.Tensor:
    """Consecutive, non-overlapping windows of `seq_length` tokens (the tail is dropped)."""
    count = len(token_ids) // seq_length
    return torch.tensor(token_ids[: count * seq_length], dtype=torch.long).view(count, seq_length)


def batch_indices(position: int, *, sequences: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of the `position`-th micro-batch (position = step x grad_accum + micro): epochs
    are seeded permutations, so any position is computed without replaying the ones before."""
    per_epoch = max(sequences // batch_size, 1)
    epoch, offset = divmod(position, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(sequences, generator=generator)
    rows = order[offset * batch_size : (offset + 1) * batch_size]
    if len(rows) < batch_size:  # fewer sequences than one batch: repeat them
        rows = order.repeat(batch_size // sequences + 1)[:batch_size]
    return rows


def micro_seed(seed: int, position: int) -> int:
    """Seed of the randomness a micro-batch uses (GKD's on-policy draw and sampling)."""
    return (seed * 2_654_435_761 + position * 40_503 + 1) % 2**63
