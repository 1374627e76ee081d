"""Measured memory of the process: RSS now, peak RSS (resettable on Linux) and, per named phase
of a job, the peak above the RSS the job started at (the runtime and its libraries are a fixed
cost, not the model's) beside CUDA's `max_memory_allocated`."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_malloc_mmap_threshold(threshold_bytes: int) -> bool:
    """glibc: serve every allocation of at least `threshold_bytes` from its own mapping, given
    back to the OS when freed. By default glibc raises that threshold as large blocks are freed,
    and then keeps freed tensors in its heap: an offloaded model allocates and frees one tensor
    after another, and RSS grew with what the heap kept (GPTQ on the offloaded 1.1B model:
    1.11 GB, 0.77 GB with 1 MiB fixed; bench/results/offloaded_load.json). The same as the
    MALLOC_MMAP_THRESHOLD_ environment variable, set from inside the worker so no launcher can
    forget it. False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so the next peak
    read covers only what ran since. False where that is not allowed (the peak is then the
    process's peak so far)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class PhaseMemory:
    """Peak memory of each phase of a job, for the report. Phases run one after another: a
    phase that started inside another would reset the outer one's peak."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.start_rss = rss_bytes()
        self.peak_reset = True
        self.phases: dict[str, dict[str, int]] = {}
        self.plan: dict[str, Any] | None = None  # the memory plan, beside the measured peaks

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.peak_reset = reset_peak_rss() and self.peak_reset
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            peak = peak_rss_bytes()
            figures = {"peak_rss_bytes": peak, "peak_above_start_bytes": peak - self.start_rss}
            if self.cuda:
                import torch

                figures["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
            self.phases[name] = figures

    def as_json(self) -> dict[str, Any]:
        return {
            "start_rss_bytes": self.start_rss,
            "peak_reset_per_phase": self.peak_reset,
            "phases": self.phases,
            **({"plan": self.plan} if self.plan else {}),
        }
