"""Serving efficiency of a saved model, measured on the worker's device in a fresh process.

A fresh process (`python -m workers.evaluation.serving`) makes "peak memory while serving" mean
what it says: on CPU the peak resident memory of a process that only loaded the model and
generated (minus what the interpreter and libraries held before the load); on CUDA the peak of
`torch.cuda.max_memory_allocated`. The job's own process holds the original, calibration data and
allocator caches, which would pollute both.

Per run: time to first token (prefill + one token), then decode time per token at batch 1, and
time per decode step at the larger batch. After `warmup` unmeasured runs, `repetitions` runs
each; every figure is reported as median and p90 over the runs, and rates come from the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from workers.models.hf import hf_config

MIN_TIMED_RUNS = 3


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0-100), as numpy's default."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "p90": round(percentile(values, 90), 4),
        "runs": len(values),
    }


class _FirstToken:
    """A transformers streamer that notes when the first generated token arrives (the first
    `put` is the prompt itself)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_generation(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device
) -> tuple[float, float]:
    """(seconds to the first new token, seconds for the remaining new_tokens - 1)."""
    streamer = _FirstToken()
    options = {"do_sample": False, "pad_token_id": 0, "min_new_tokens": new_tokens}
    _sync(device)
    started = time.perf_counter()
    lm: Any = model  # `generate` comes from the architecture's class (GenerationMixin)
    lm.generate(prompt, max_new_tokens=new_tokens, streamer=streamer, **options)
    _sync(device)
    ended = time.perf_counter()
    return streamer.first_token_at - started, ended - streamer.first_token_at


@dataclass
class TimedRuns:
    """`warmup` unmeasured runs, then up to `repetitions` timed ones, stopping early once the
    timed runs have taken `max_seconds` (after at least MIN_TIMED_RUNS): a slow format on a
    slow device costs a bounded time, and the result says how many runs it rests on."""

    warmup: int
    repetitions: int
    max_seconds: float | None = None
    on_run: Callable[[int, int], None] | None = None
    timed: int = 0
    started: float = 0.0

    def __iter__(self) -> Iterator[bool]:
        """Yields, per run, whether it is timed."""
        total = self.warmup + self.repetitions
        for run in range(total):
            if run == self.warmup:
                self.started = time.perf_counter()
            yield run >= self.warmup
            if run >= self.warmup:
                self.timed += 1
            if self.on_run:
                self.on_run(run + 1, total)
            if self.over_budget:
                return

    @property
    def over_budget(self) -> bool:
        enough = self.timed >= min(MIN_TIMED_RUNS, self.repetitions)
        spent = time.perf_counter() - self.started
        return self.max_seconds is not None and enough and spent > self.max_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "warmup": self.warmup,
            "repetitions": self.timed,
            "requested_repetitions": self.repetitions,
            "stopped_by_time_budget": self.timed < self.repetitions,
        }


def measure(
    model: torch.nn.Module,
    *,
    device: torch.device,
    vocab_size: int,
    prompt_tokens: int,
    new_tokens: int,
    batch_size: int,
    runs: TimedRuns,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency and throughput of greedy generation from a fixed random prompt."""
    generator = torch.Generator().manual_seed(seed)
    # Token ids from the middle of the vocabulary: no special tokens, same prompt every run.
    prompt = torch.randint(
        vocab_size // 4, vocab_size // 2, (1, prompt_tokens), generator=generator
    ).to(device)
    batch = prompt.expand(batch_size, -1).contiguous()
    ttft, per_token, per_step = [], [], []
    for timed in runs:
        first, rest = time_generation(model, prompt, new_tokens, device)
        _, batch_rest = time_generation(model, batch, new_tokens, device)
        if timed:
            ttft.append(first * 1000)
            per_token.append(rest * 1000 / (new_tokens - 1))
            per_step.append(batch_rest * 1000 / (new_tokens - 1))
    decode = spread(per_token)
    step = spread(per_step)
    return {
        "ttft_ms": spread(ttft),
        "decode_ms_per_token_b1": decode,
        "decode_tokens_per_second_b1": round(1000 / decode["median"], 3),
        f"decode_ms_per_step_b{batch_size}": step,
        "batch_size": batch_size,
        "throughput_tokens_per_second": round(batch_size * 1000 / step["median"], 3),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        **runs.as_json(),
    }


def progress_writer(path: Path | None) -> Callable[[int, int], None] | None:
    """The child's "run i of n", in a file the parent reads while it waits."""
    if path is None:
        return None

    def write(done: int, total: int) -> None:
        path.write_text(f"{done} {total}\n")

    return write


def probe(
    model_dir: Path, device_name: str, spec: dict[str, Any], progress_file: Path | None = None
) -> dict[str, Any]:
    """Load the model and measure it (runs in the fresh process): a GGUF artifact in
    llama.cpp where the worker has it, everything else in transformers."""
    from workers.evaluation import serving_llama_cpp
    from workers.formats import gguf
    from workers.formats.loader import artifact_format
    from workers.methods.shared.storage_dtype import compute_dtype

    device = torch.device(device_name)
    dtype = compute_dtype(device)
    is_gguf = artifact_format(model_dir) == gguf.FORMAT
    spec = dict(spec)
    runs = TimedRuns(
        spec.pop("warmup"),
        spec.pop("repetitions"),
        spec.pop("max_seconds", None),
        on_run=progress_writer(progress_file),
    )
    rss_before = rss_bytes()
    if is_gguf and serving_llama_cpp.available():
        # llama.cpp allocates outside torch: its memory is the process's peak RSS (on a GPU,
        # host memory only), load included.
        result = serving_llama_cpp.measure(
            gguf.artifact_file(model_dir),
            gpu=device.type == "cuda",
            threads=torch.get_num_threads(),
            runs=runs,
            **spec,
        )
        peak_rss = peak_rss_bytes()
        memory = {
            "peak_memory_bytes": peak_rss - rss_before,
            "peak_rss_bytes": peak_rss,
            "memory_measure": "peak RSS of the process, load included (llama.cpp)",
        }
        return {**result, **memory, "threads": torch.get_num_threads()}
    result = probe_transformers(model_dir, device, dtype, spec, runs, rss_before)
    if is_gguf:
        result["runtime_note"] = (
            "GGUF measured in transformers, which dequantizes it on load: not the speed "
            "llama.cpp gives (this worker has no llama-cpp-python)"
        )
    return result


def probe_transformers(
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    spec: dict[str, Any],
    runs: TimedRuns,
    rss_before: int,
) -> dict[str, Any]:
    from workers.formats.loader import load_pretrained

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = load_pretrained(model_dir, dtype=dtype).to(device).eval()
    load_seconds = time.perf_counter() - started
    gc.collect()
    serving_only = device.type == "cpu" and reset_peak_rss()
    vocab = int(hf_config(model).vocab_size)
    result = measure(model, device=device, vocab_size=vocab, runs=runs, **spec)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated())
        memory = {"peak_memory_bytes": peak, "memory_measure": "torch.cuda.max_memory_allocated"}
    else:
        peak_rss = peak_rss_bytes()
        memory = {
            "peak_memory_bytes": peak_rss - rss_before,
            "peak_rss_bytes": peak_rss,
            "memory_measure": "peak RSS while generating (reset after the load)"
            if serving_only
            else "peak RSS of the process, load included",
        }
    return {
        "runtime": "transformers",
        **result,
        **memory,
        "load_seconds": round(load_seconds, 3),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }


def measure_in_subprocess(
    model_dir: Path,
    device: torch.device,
    spec: dict[str, Any],
    *,
    timeout_s: float,
    check: Callable[[], None] | None = None,
    on_run: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run `probe` in a fresh interpreter; `check` (the job's cancel/lease check point) is
    called every second and the child is killed when it raises; `on_run` hears "run i of n"
    from the child's progress file."""
    # Files, not pipes: nobody reads a pipe while the child runs, and a child that logs more
    # than a pipe holds (progress bars, warnings) would block on it until the timeout.
    with (
        tempfile.TemporaryDirectory(prefix="squash-serving-") as folder,
        tempfile.TemporaryFile("w+") as stdout,
        tempfile.TemporaryFile("w+") as stderr,
    ):
        progress_file = Path(folder) / "progress"
        command = [
            sys.executable,
            "-m",
            "workers.evaluation.serving",
            str(model_dir),
            "--device",
            str(device),
            "--spec",
            json.dumps(spec),
            "--progress",
            str(progress_file),
        ]
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        deadline = time.monotonic() + timeout_s
        reported = ""
        try:
            while child.poll() is None:
                if check:
                    check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"serving measurement took longer than {timeout_s:.0f} s")
                reported = _relay_progress(progress_file, reported, on_run)
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            tail = stderr.read().strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"serving measurement exited {child.returncode}: {tail[0]}")
        return json.loads(stdout.read().strip().splitlines()[-1])


def _relay_progress(path: Path, reported: str, on_run: Callable[[int, int], None] | None) -> str:
    try:
        line = path.read_text().strip()
        done, total = (int(part) for part in line.split())
    except (OSError, ValueError):  # not written yet, or caught mid-write: next second
        return reported
    if on_run and line != reported:
        on_run(done, total)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spec", required=True, help="JSON: prompt_tokens, new_tokens, …")
    parser.add_argument("--progress", type=Path, default=None, help="file for 'run i of n'")
    args = parser.parse_args()
    found = probe(args.model_dir, args.device, json.loads(args.spec), args.progress)
    print(json.dumps(found))  # noqa: T201 - the parent reads this line


if __name__ == "__main__":
    main()
