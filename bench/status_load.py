"""Load benchmark of GET /v1/jobs/{id} on the real stack (uvicorn + Postgres + Redis), beside a
trivial FastAPI endpoint under the same server settings as the baseline.

    .venv/bin/python -m bench.status_load [--seconds 10] [--concurrency 64]

Target (issue 2): at least half the baseline's requests/s, p99 under 50 ms at 64 clients.
Results are printed and written to bench/results/status_load.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from app.auth import service as auth_service
from app.db import session_scope
from bench.loadgen import LoadResult, run_load
from tests.support.services import free_port, private_stack_settings, running_api, serve

ROOT = Path(__file__).resolve().parents[1]


def row(name: str, result: LoadResult) -> dict[str, Any]:
    return {
        "endpoint": name,
        "requests": result.requests,
        "errors": result.errors,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p90_ms": round(result.p90_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    with private_stack_settings(
        "bench",
        object_store_url="file:///tmp/bench-store",
        secret_key="bench-signing-key",
        reaper_enabled=False,
        # 64 clients of one tenant poll flat out: a refill nobody outruns keeps the limiter in
        # the measured path (the default burst, so Redis is asked every 10 requests) without
        # answering 429s.
        rate_limit_per_minute=1e9,
        rate_limit_burst=200,
    ) as settings:
        with session_scope(settings.database_url) as session:
            key = auth_service.create_key(session, tenant_name="bench").secret
        base_port = free_port()
        baseline_proc = serve("bench.trivial_app:app", base_port, {}, factory=False)
        try:
            with running_api(settings) as api_port:
                headers = {"Authorization": f"Bearer {key}"}
                body = {
                    "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
                    "recipe": [{"method": "rtn"}],
                    "device": "gpu",
                    "labels": {"bench": "status"},
                }
                job = httpx.post(f"http://127.0.0.1:{api_port}/v1/jobs", json=body, headers=headers)
                path = f"/v1/jobs/{job.raise_for_status().json()['id']}"
                load = {"concurrency": args.concurrency, "seconds": args.seconds}
                baseline = run_load("127.0.0.1", base_port, path, {}, **load)
                ours = run_load("127.0.0.1", api_port, path, headers, **load)
        finally:
            baseline_proc.terminate()
            baseline_proc.wait(timeout=10)
    result = {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "server": "uvicorn, 1 worker process, same settings for both",
        "baseline": row("trivial FastAPI GET", baseline),
        "squash": row("GET /v1/jobs/{id} (auth + Postgres)", ours),
        "ratio_rps": round(ours.rps / baseline.rps, 3),
        "targets": {
            "ratio_rps >= 0.5": ours.rps / baseline.rps >= 0.5,
            "p99_ms < 50": ours.p99_ms < 50,
        },
    }
    out = ROOT / "bench" / "results" / "status_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for item in (result["baseline"], result["squash"]):
        print(
            f"{item['endpoint']:40} {item['rps']:>8.1f} req/s  p50 {item['p50_ms']:6.2f} ms  "
            f"p99 {item['p99_ms']:6.2f} ms  errors {item['errors']}"
        )
    print(f"ratio (squash / baseline): {result['ratio_rps']}   targets: {result['targets']}")


if __name__ == "__main__":
    main()
