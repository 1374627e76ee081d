"""Which worker processes import the ML stack before forking their job processes."""

from __future__ import annotations

from collections.abc import Iterable

from app.config import Settings


def preloads_ml_stack(settings: Settings, consumed: Iterable[str]) -> bool:
    """Whether this worker imports torch, transformers and llm-compressor once, in the pool's
    parent, so every job's process is forked with them (seconds saved per job: a fresh process
    per job otherwise imports them again). Only a worker whose queues are all CPU pools: a
    parent that touched CUDA (llm-compressor asks for a device on import) would hand its job
    processes a CUDA they cannot initialize."""
    devices = {pool.device for pool in settings.worker_pools if pool.queue in set(consumed)}
    return devices == {"cpu"}
