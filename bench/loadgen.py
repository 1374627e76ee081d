"""A small closed-loop HTTP/1.1 load generator (keep-alive, N concurrent connections).

Written on raw asyncio streams because a Python HTTP client library would be slower than the
servers it measures on this 2-core machine; it runs in its own process beside the server.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def _client(
    host: str, port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def _run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    warmup: float,
) -> LoadResult:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode()
    # Warm-up (connections, caches, JIT-free but import-lazy code paths), then the measured run.
    await asyncio.gather(
        *[
            _client(host, port, request, time.perf_counter() + warmup, [], [])
            for _ in range(concurrency)
        ]
    )
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(
        *[
            _client(host, port, request, started + seconds, latencies, errors)
            for _ in range(concurrency)
        ]
    )
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return LoadResult(
        len(latencies),
        len(errors),
        elapsed,
        quantiles[49] * 1000,
        quantiles[89] * 1000,
        quantiles[98] * 1000,
    )


def run_load(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    concurrency: int = 64,
    seconds: float = 10.0,
    warmup: float = 2.0,
) -> LoadResult:
    return asyncio.run(_run(host, port, path, headers, concurrency, seconds, warmup))
