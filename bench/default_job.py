"""A new user's first job: RTN 8-bit on SmolLM2-135M with every evaluation default, on a fresh
embedded stack (no converted model, no cached baseline), timed from submission to `succeeded`.

    .venv/bin/python -m bench.default_job            # ~5 min on 2 CPU cores
    .venv/bin/python -m bench.default_job --demo     # also times `squash demo` (~4 min)

`--demo` runs `squash demo` as a user does after `make install`, in a new data directory (so
the model's conversion and the original's evaluation are included), and records its wall time
as `demo_seconds` (target <= 4 minutes).

Targets (issue 23; exits 1 if broken): the job finishes in <= 5 minutes with its report
complete (perplexity of both models, generations, serving figures in the runtime that fits the
format), and the worker's estimate is within 2x of the measured running time. Writes
`default_job_seconds` and `estimate_ratio` into bench/results/formats.json (other keys kept).
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from app.cli.client import SquashClient
from app.cli.embedded import EmbeddedStack
from bench.common import RESULTS_DIR

RESULTS = RESULTS_DIR / "formats.json"
TARGET_SECONDS = 300.0
DEMO_TARGET_SECONDS = 240.0
JOB: dict[str, Any] = {
    "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
    "recipe": [{"method": "rtn", "params": {"bits": 8}}],
    "device": "cpu",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_default_job() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="squash-default-job-") as data_dir:
        stack = EmbeddedStack(Path(data_dir), free_port())
        key = stack.start()
        try:
            client = SquashClient(stack.url, key)
            started = time.perf_counter()
            job = client.submit(JOB)
            job = client.wait(job["id"])
            wall = time.perf_counter() - started
            report = client.report(job["id"]) if job["state"] == "succeeded" else {}
        finally:
            stack.stop()
    return {"job": job, "wall": wall, "report": report}


def complete(report: dict[str, Any]) -> list[str]:
    """What a report must hold to count as complete."""
    missing = []
    for model in ("original", "compressed"):
        for figure in ("perplexity", "efficiency"):
            if not report.get(model, {}).get(figure):
                missing.append(f"{model}.{figure}")
    if not report.get("generations"):
        missing.append("generations")
    return missing


def time_demo() -> float:
    import subprocess
    import sys

    squash = Path(sys.executable).with_name("squash")
    with tempfile.TemporaryDirectory(prefix="squash-demo-") as data_dir:
        started = time.perf_counter()
        subprocess.run(
            [str(squash), "demo", "--data-dir", data_dir, "--port", str(free_port())],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", action="store_true", help="also time `squash demo`")
    args = parser.parse_args()
    demo_seconds = time_demo() if args.demo else None
    found = run_default_job()
    job, wall, report = found["job"], found["wall"], found["report"]
    failures: list[str] = []
    if job["state"] != "succeeded":
        failures.append(f"job {job['state']}: {job.get('error')}")
    missing = complete(report)
    if missing:
        failures.append(f"report incomplete: {missing}")
    estimate = report.get("estimate", {}).get("seconds") or 0.0
    timings = report.get("timings_s", {})
    # The phases, each once (a stage's own time is inside "stages").
    running = sum(v for k, v in timings.items() if not k.startswith("stage_")) or wall
    ratio = running / estimate if estimate else float("inf")
    print(f"default RTN 8-bit job: {wall:.1f} s from submission to {job['state']}")
    print(f"  phases: {json.dumps(timings)}")
    print(f"  estimate {estimate:.1f} s ({report.get('estimate', {}).get('breakdown_s')})")
    print(f"  measured / estimate = {ratio:.2f}")
    if wall > TARGET_SECONDS:
        failures.append(f"took {wall:.0f} s > {TARGET_SECONDS:.0f} s")
    if not 0.5 <= ratio <= 2.0:
        failures.append(f"estimate off by {ratio:.2f}x")
    if demo_seconds is not None:
        print(f"squash demo: {demo_seconds:.1f} s")
        if demo_seconds > DEMO_TARGET_SECONDS:
            failures.append(f"squash demo took {demo_seconds:.0f} s > {DEMO_TARGET_SECONDS:.0f} s")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if demo_seconds is not None:
        previous["demo_seconds"] = round(demo_seconds, 1)
    previous.update(
        default_job_seconds=round(wall, 1),
        estimate_ratio=round(ratio, 3),
        default_job={"timings_s": timings, "estimate": report.get("estimate")},
        default_job_failures=failures,
    )
    RESULTS.write_text(json.dumps(previous, indent=2) + "\n")
    if failures:
        raise SystemExit("TARGETS BROKEN:\n  " + "\n  ".join(failures))
    print("all targets hold")


if __name__ == "__main__":
    main()
