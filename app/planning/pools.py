"""Routing by size: each job goes to the smallest worker pool whose memory fits its plan.

Operators declare pools in `WORKER_POOLS` (`app/config.py`): a queue name, a device kind and the
memory one job may use there (e.g. `gpu-24g`, `gpu-80g`, `cpu`). Every worker consumes one
pool's queue (`celery worker -Q gpu-24g`). Throughput grows by adding workers to a pool (same
Redis, Postgres and object store); Celery delivers each message to one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from app.config import WorkerPool
from app.planning.memory_plan import FASTEST_MODE, Budget, MemoryPlan


class NoPoolFits(Exception):
    """No declared pool can run the job (the message carries each pool's figures)."""


@dataclass(frozen=True)
class Routing:
    queue: str
    plan: MemoryPlan | None  # None: the model's size was not readable at submission


def _size(pool: WorkerPool) -> tuple[float, float]:
    device = pool.device_memory_bytes if pool.device == "gpu" else pool.host_memory_bytes
    return (device or math.inf, pool.host_memory_bytes or math.inf)


def budget_of(pool: WorkerPool) -> Budget:
    return Budget(
        device=pool.device,
        host_bytes=pool.host_memory_bytes,
        device_bytes=pool.device_memory_bytes if pool.device == "gpu" else None,
    )


def route(
    device: str, pools: tuple[WorkerPool, ...], plan_for: Callable[[Budget], MemoryPlan] | None
) -> Routing:
    """The smallest pool of `device` whose budget the plan fits in memory (the fastest mode),
    else the smallest where it fits offloaded. Without a plan (a source whose config the API
    cannot read) the largest: its worker plans again before loading and refuses, with the
    figures, what does not fit."""
    candidates = sorted((p for p in pools if p.device == device), key=_size)
    if not candidates:
        raise NoPoolFits(f"no worker pool runs {device} jobs (WORKER_POOLS)")
    if plan_for is None:
        return Routing(candidates[-1].queue, None)
    plans = [(pool, plan_for(budget_of(pool))) for pool in candidates]
    fitting = [(pool, plan) for pool, plan in plans if plan.fits]
    if fitting:
        pool, plan = min(fitting, key=lambda found: found[1].mode != FASTEST_MODE)
        return Routing(pool.queue, plan)
    refusals = [f"{pool.queue}: {plan.shortfall}" for pool, plan in plans]
    raise NoPoolFits("no worker pool has the memory this job needs: " + "; ".join(refusals))
