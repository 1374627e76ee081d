"""A worker's own metrics, served by its main process in Prometheus's text format
(prometheus-client) when WORKER_METRICS_PORT is set: phase durations and peak memory of the
jobs it ran, and jobs by outcome.

Each job runs in a forked pool process (workers/celery_app.py), so this uses prometheus-client's
multiprocess mode: the job process writes its observations to files under a directory named
by PROMETHEUS_MULTIPROC_DIR, and the main process's HTTP server sums every process's files, the
finished ones included. `prepare()` must run before prometheus_client is first imported (it
picks the mode then): workers/celery_app.py calls it at the top.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from app.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# 1 s to ~9 h, and 64 MiB to 512 GiB: compression phases and model sizes span that much.
SECONDS_BUCKETS = tuple(float(2**k) for k in range(0, 16))
BYTES_BUCKETS = tuple(float(2**k) for k in range(26, 40))


def prepare(settings: Settings) -> None:
    """In the worker's main process, before anything imports prometheus_client."""
    if not settings.worker_metrics_port:
        return
    # Per host and process: worker containers may share one work volume and one pid.
    directory = Path(settings.work_dir) / "metrics" / f"{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def serve(settings: Settings) -> None:
    """The main process's HTTP server (a daemon thread), summing every job process's files."""
    if not settings.worker_metrics_port or MULTIPROC_ENV not in os.environ:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, registry=registry)


class _Metrics:
    """Created on first use, inside the job process (after the mode is set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.phase_seconds = Histogram(
            "squash_worker_phase_seconds",
            "Wall time of a job phase (stages: phase=stage, method=the stage's method)",
            ["phase", "method"],
            buckets=SECONDS_BUCKETS,
        )
        self.phase_peak = Histogram(
            "squash_worker_phase_peak_memory_bytes",
            "Peak resident memory of the job process during a phase (GPU: device memory)",
            ["phase", "memory"],
            buckets=BYTES_BUCKETS,
        )
        self.jobs = Counter(
            "squash_worker_jobs", "Job attempts this worker finished, by outcome", ["outcome"]
        )


_metrics: _Metrics | None = None


def _get() -> _Metrics | None:
    global _metrics
    if MULTIPROC_ENV not in os.environ:
        return None  # not serving: nothing to record
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def phase_done(phase: str, seconds: float, memory: dict[str, int] | None, method: str = "") -> None:
    metrics = _get()
    if metrics is None:
        return
    metrics.phase_seconds.labels(phase=phase, method=method).observe(seconds)
    for kind, key in (("rss", "peak_rss_bytes"), ("cuda", "cuda_peak_bytes")):
        if memory and key in memory:
            metrics.phase_peak.labels(phase=phase, memory=kind).observe(memory[key])


def job_done(outcome: str) -> None:
    metrics = _get()
    if metrics is not None:
        metrics.jobs.labels(outcome=outcome).inc()
