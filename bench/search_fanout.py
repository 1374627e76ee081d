"""Fan-out of a search job (issue 25): the same search on SmolLM2-135M with 1 worker, then with 2.

    .venv/bin/python -m bench.search_fanout          # ~25 min on 2 CPU cores

The whole stack, as deployed: a fresh Postgres database and Redis prefix, S3 over HTTP (moto),
the API as a uvicorn process (its reaper round wakes the search), Celery worker processes.
Each worker stands for one machine: pinned to its own core (`taskset`) with one compute thread,
in both runs, so 2 workers are 2 machines like the 1 (this host has 2 cores; two unpinned
workers would share them). Before each run the baseline cache (`baselines/`) is emptied, so
both runs measure the original alike; a warm-up evaluate job first fills the model cache both
runs read. The search: budget 4.25 bits per quantized weight, 4 candidates, rotation allowed
(and, beside them, the original's full evaluation as an evaluate child). Wall time is the search
job's own, from its creation to `succeeded` (the API's timestamps). The serial part (the first
attempt's sensitivity pass, the second attempt's measuring of the winner) bounds the ratio from
below; the host's other processes (API, Postgres, S3 server) share the same 2 cores.

Target: 2 workers finish in <= 0.65x the wall time of 1. Results go into bench/results/
search.json (`fanout_wall_time_ratio`, `fanout`), beside bench/search.py's quality figures.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import httpx

from app.auth import service as auth_service
from app.cli.embedded import worker_command
from app.config import Settings
from app.db import session_scope
from app.storage import make_store
from bench.common import RESULTS_DIR, run_reported_job, write_results
from tests.support.services import (
    FAST_FAILURE_TIMINGS,
    ROOT,
    free_port,
    private_stack_settings,
    running_api,
    settings_env,
)

RESULTS = RESULTS_DIR / "search.json"
TARGET_RATIO = 0.65
BUCKET = "squash-fanout"
MODEL = {"kind": "builtin", "name": "smollm2-135m-instruct"}
EVALUATION = {
    "max_tokens": 4096,
    "context_length": 512,
    "efficiency": {"enabled": False},
    "max_new_tokens": 8,
}
SEARCH = {
    "kind": "search",
    "model": MODEL,
    "calibration": {"num_samples": 16, "max_seq_length": 256},
    "evaluation": EVALUATION,
    "search": {
        "budget": {"max_bits_per_weight": 4.25},
        "max_candidates": 4,
        "candidate_eval_tokens": 2048,
        "sensitivity_samples": 4,
    },
    "device": "cpu",
}


class PinnedWorker:
    """A Celery worker on one core with one compute thread: one machine of the fan-out."""

    def __init__(self, settings: Settings, core: int, log_path: Path) -> None:
        env = {
            **os.environ,
            **settings_env(settings),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.log = log_path.open("ab")
        argv = [*worker_command(["cpu"], 1), "--without-heartbeat", "-n", f"fanout-{core}@%h"]
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def seconds(job: dict[str, Any], since: str = "created_at") -> float:
    began = datetime.fromisoformat(job[since])
    return round((datetime.fromisoformat(job["finished_at"]) - began).total_seconds(), 1)


def run_search(
    client: httpx.Client, settings: Settings, workers: int, logs: Path
) -> dict[str, Any]:
    make_store(settings).delete_prefix("baselines/")
    pinned = [
        PinnedWorker(settings, core, logs / f"w{workers}-{core}.log") for core in range(workers)
    ]
    try:
        job, report = run_reported_job(client, f"{workers} worker(s)", SEARCH, poll_s=5)
    finally:
        for worker in pinned:
            worker.stop()
    children = client.get("/v1/jobs", params={"parent_id": job["id"]}).json()["items"]
    section = report["search"]
    return {
        "workers": workers,
        "job_id": job["id"],
        "wall_seconds": seconds(job),
        # Each child from its creation (the end of the search's first attempt) to its end, and
        # its own run (its last attempt's claim to its end).
        "children_done_after_seconds": sorted(seconds(c) for c in children),
        "children_run_seconds": [
            {"kind": c["kind"], "seconds": seconds(c, "started_at")} for c in children
        ],
        "sensitivity_seconds": section["sensitivity_seconds"],
        "pick": next(c["name"] for c in section["candidates"] if c["winner"]),
        "why": section["why"],
        "pick_perplexity_full_evaluation": report["summary"]["compressed_perplexity"],
        "original_perplexity": report["summary"].get("original_perplexity"),
        "pick_bits_per_quantized_weight": report["summary"]["bits_per_quantized_weight"],
        "candidates": [
            {k: c[k] for k in ("name", "bits_per_quantized_weight", "perplexity", "change_pct")}
            for c in section["candidates"]
        ],
    }


def main() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any
        os.environ.setdefault(name, "fanout")
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    runs = []
    with tempfile.TemporaryDirectory(prefix="squash-fanout-") as work:
        overrides = {
            **FAST_FAILURE_TIMINGS,
            "heartbeat_interval_s": 2.0,
            "lease_ttl_s": 60.0,  # one core per worker: a busy beat must not lose the lease
            "object_store_url": f"s3://{BUCKET}/artifacts",
            "s3_endpoint_url": endpoint,
            "work_dir": Path(work) / "work",
            "hf_offline": True,
            "default_device": "cpu",
        }
        with private_stack_settings("fanout", **overrides) as settings:
            with session_scope(settings.database_url) as session:
                secret = auth_service.create_key(session, tenant_name="fanout").secret
            with (
                running_api(settings) as api_port,
                httpx.Client(
                    base_url=f"http://127.0.0.1:{api_port}",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=60,
                ) as client,
            ):
                warm = PinnedWorker(settings, 0, Path(work) / "warm.log")
                try:  # the model's conversion cache, read by every job of both runs
                    warmup = {"kind": "evaluate", "model": MODEL, "evaluation": EVALUATION}
                    run_reported_job(client, "warm-up", {**warmup, "device": "cpu"}, poll_s=5)
                finally:
                    warm.stop()
                for workers in (1, 2):
                    runs.append(run_search(client, settings, workers, Path(work)))
                    print(json.dumps(runs[-1]), flush=True)
    moto.stop()
    ratio = round(runs[1]["wall_seconds"] / runs[0]["wall_seconds"], 3)
    print(f"2 workers / 1 worker: {ratio} (target <= {TARGET_RATIO})")
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    failures = [f for f in result.get("target_failures", []) if "fan-out" not in f]
    result.pop("target_failures", None)
    result["fanout_wall_time_ratio"] = ratio
    result["fanout"] = {
        "search": SEARCH,
        "machine": "1 core and 1 compute thread per worker (taskset), 2-core host",
        "runs": runs,
    }
    if ratio > TARGET_RATIO:
        failures.append(f"fan-out: 2 workers took {ratio}x the wall time of 1 (> {TARGET_RATIO})")
    write_results(RESULTS, result, failures)


if __name__ == "__main__":
    main()
