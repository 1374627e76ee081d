"""Load run: N simulated clients (default 500, one tenant each) submit jobs and poll them for
a fixed time (default 5 minutes) against a real API (uvicorn, Postgres, Redis).

    .venv/bin/python -m bench.api_load [--clients 500] [--seconds 300] [--api-workers 2]

Each client loops like a polling script: submit a job, poll its status about once a second,
read its events, cancel it, poll until it reads `cancelled`, list its jobs; then again. The
jobs are lightweight: parked on the gpu queue, which no worker consumes here, so the load is
the API's own (auth, rate limits, Postgres, the broker send), not compression.
Target (issue 5): 0 errors, p99 of status polls < 100 ms on this 2-core machine.
Results: printed, and written to bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from app.auth import service as auth_service
from app.db import session_scope
from tests.support.services import private_stack_settings, running_api

ROOT = Path(__file__).resolve().parents[1]
JOB = {
    "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
    "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 64}}],
    "device": "gpu",
    "labels": {"bench": "load"},
}


class Connection:
    """One keep-alive HTTP/1.1 connection (raw asyncio: an HTTP client library would cost
    more CPU than the server it measures on this 2-core machine)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    # Below uvicorn's 5 s keep-alive timeout: like httpx (keepalive_expiry 5 s), a connection
    # idle this long is not reused, so a request never races the server closing it.
    KEEPALIVE_EXPIRY_S = 4.0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.last_used > self.KEEPALIVE_EXPIRY_S:
            self.writer.close()
            self.writer = None
        reused = self.writer is not None
        answer = await self._request(method, path, body)
        if answer is None and reused:
            # The server closed the idle keep-alive connection (uvicorn: after 5 s), as HTTP
            # clients do, send again on a new one; nothing was answered on the old one.
            answer = await self._request(method, path, body)
        if answer is None:
            raise ConnectionResetError("connection closed before a response")
        self.last_used = time.monotonic()
        return answer

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Length: {len(body)}\r\n"
            + ("Content-Type: application/json\r\n" if body else "")
            + "\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            self.writer.close()
            self.writer = None
            return None
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return int(status_line.split()[1]), payload


async def client(
    conn: Connection,
    measure_from: float,
    stop_at: float,
    latencies: dict[str, list[float]],
    errors: dict[str, list[str]],
    think_s: float,
) -> None:
    async def call(name: str, method: str, path: str, body: Any = None, ok=(200,)) -> Any:
        started = time.perf_counter()
        if started >= stop_at:
            # Time is up: no trailing calls (all 500 clients would otherwise leave their poll
            # loops at the same instant and send events/cancel/list together, a burst no
            # real fleet makes).
            return None
        try:
            status, payload = await conn.request(
                method, path, json.dumps(body).encode() if body is not None else b""
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            conn.writer = None
            errors[name].append(type(exc).__name__)  # counted during the ramp as well
            return None
        if started >= measure_from:
            latencies[name].append(time.perf_counter() - started)
        if status not in ok:
            errors[name].append(f"{status}: {payload[:200]!r}")
            return None
        return json.loads(payload)

    async def think() -> None:
        await asyncio.sleep(think_s * random.uniform(0.5, 1.5))

    # Clients arrive spread over the ramp, as a fleet of pipelines would, not in one burst.
    await asyncio.sleep(random.uniform(0, max(measure_from - time.perf_counter(), 0)))
    while time.perf_counter() < stop_at:
        job = await call("POST /v1/jobs", "POST", "/v1/jobs", JOB, ok=(202,))
        if job is None:
            await think()
            continue
        path = f"/v1/jobs/{job['id']}"
        for _ in range(random.randint(5, 15)):
            await think()
            if time.perf_counter() >= stop_at:
                break
            await call("GET /v1/jobs/{id}", "GET", path)
        await call("GET /v1/jobs/{id}/events", "GET", f"{path}/events")
        await call("POST /v1/jobs/{id}/cancel", "POST", f"{path}/cancel", ok=(202,))
        while time.perf_counter() < stop_at:
            await think()
            state = await call("GET /v1/jobs/{id}", "GET", path)
            if state is None or state["state"] == "cancelled":
                break
        await call("GET /v1/jobs", "GET", "/v1/jobs?limit=20")
        await think()


def quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(values, n=100)
    return {
        "p50_ms": round(cuts[49] * 1000, 2),
        "p95_ms": round(cuts[94] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


async def drive(
    port: int, keys: list[str], seconds: float, think_s: float, ramp_s: float
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    measure_from = time.perf_counter() + ramp_s
    stop_at = measure_from + seconds
    await asyncio.gather(
        *[
            client(
                Connection("127.0.0.1", port, key),
                measure_from,
                stop_at,
                latencies,
                errors,
                think_s,
            )
            for key in keys
        ]
    )
    elapsed = time.perf_counter() - measure_from  # includes the last calls' think and answer
    endpoints = {}
    for name in sorted(latencies):
        endpoints[name] = {
            "requests": len(latencies[name]),
            "errors": len(errors[name]),
            "rps": round(len(latencies[name]) / seconds, 1),  # calls start inside `seconds`
            **quantiles(latencies[name]),
        }
    samples = {name: items[:3] for name, items in errors.items() if items}
    return {"elapsed_s": round(elapsed, 1), "endpoints": endpoints, "error_samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between calls")
    parser.add_argument(
        "--ramp", type=float, default=30.0, help="seconds over which clients start (not timed)"
    )
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument(
        "--db-connections",
        type=int,
        default=None,
        help="DB_CONNECTIONS_PER_PROCESS (default: its default)",
    )
    args = parser.parse_args()

    # Production defaults for every limit: 500 tenants, each well inside its own buckets.
    with private_stack_settings(
        "bench",
        object_store_url="file:///tmp/bench-store",
        secret_key="bench-signing-key",
        webhook_dispatch_enabled=False,
        **({"db_connections_per_process": args.db_connections} if args.db_connections else {}),
    ) as settings:
        with session_scope(settings.database_url) as session:
            keys = [
                auth_service.create_key(session, tenant_name=f"client-{i}").secret
                for i in range(args.clients)
            ]
        with running_api(settings, workers=args.api_workers) as port:
            result = asyncio.run(drive(port, keys, args.seconds, args.think, args.ramp))
    polls = result["endpoints"].get("GET /v1/jobs/{id}", {})
    total_errors = sum(item["errors"] for item in result["endpoints"].values())
    total = sum(item["requests"] for item in result["endpoints"].values())
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "think_s": args.think,
        "ramp_s": args.ramp,
        "server": f"uvicorn, {args.api_workers} worker processes, production limits",
        **result,
        "requests_per_s": round(total / args.seconds, 1),
        "error_rate": round(total_errors / max(total, 1), 6),
        "targets": {
            "errors == 0": total_errors == 0,
            "status poll p99 < 100 ms": polls.get("p99_ms", 1e9) < 100,
        },
    }
    # One file per think time: the default run, and slower pollers for the capacity curve.
    suffix = "" if args.think == 1.0 else f"_think{args.think:g}s"
    out = ROOT / "bench" / "results" / f"api_load{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.clients} clients, think {args.think:g} s, {args.seconds:g} s timed: "
        f"{result['requests_per_s']} requests/s, error rate {result['error_rate']}"
    )
    for endpoint, item in result["endpoints"].items():
        print(
            f"{endpoint:28} {item['requests']:>7} req {item['rps']:>7.1f}/s  "
            f"p50 {item.get('p50_ms', 0):7.2f}  p95 {item.get('p95_ms', 0):7.2f}  "
            f"p99 {item.get('p99_ms', 0):7.2f} ms  errors {item['errors']}"
        )
    if result["error_samples"]:
        print("error samples:", json.dumps(result["error_samples"])[:2000])
    print("targets:", result["targets"])


if __name__ == "__main__":
    main()
