"""Which workers import the ML stack once in the pool's parent (workers/preload.py)."""

from __future__ import annotations

from app.config import Settings, WorkerPool
from workers.preload import preloads_ml_stack


def test_only_workers_of_cpu_pools_preload() -> None:
    pools = (
        WorkerPool(queue="gpu", device="gpu"),
        WorkerPool(queue="cpu", device="cpu"),
        WorkerPool(queue="cpu-big", device="cpu"),
    )
    settings = Settings(worker_pools=pools)
    assert preloads_ml_stack(settings, ["cpu"])
    assert preloads_ml_stack(settings, ["cpu", "cpu-big"])
    # A parent that touched CUDA would leave its forked job processes unable to use it.
    assert not preloads_ml_stack(settings, ["gpu"])
    assert not preloads_ml_stack(settings, ["cpu", "gpu"])
    assert not preloads_ml_stack(settings, ["unknown"])
