"""In memory vs disk-offloaded on SmolLM2-135M-Instruct (issue 20): the same job through the
service's API (embedded stack) twice, once on a worker told to hold the model in memory and
once on one told to run it disk-offloaded (WORKER_EXECUTION_MODE), side by side in one run.

    .venv/bin/python -m bench.offload_equivalence              # RTN and GPTQ W4 (~10 min)
    .venv/bin/python -m bench.offload_equivalence --only rtn

Compared: the artifact's weight files (sha256, and tensor for tensor when the files differ),
the compressed and original perplexities the reports give (in-domain and the second corpus),
and the wall time of the job (started to finished, as the API records it). Targets: the same
tensors, the same perplexity, offloaded wall time <= 1.5x the in-memory one. Writes
bench/results/offload_equivalence.json and the `offload_*` fields of bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from app.cli.embedded import EmbeddedStack
from bench.common import RESULTS_DIR, run_reported_job, write_results
from bench.distillation_quality import free_port

RESULTS = RESULTS_DIR / "offload_equivalence.json"
SCALE_RESULTS = RESULTS_DIR / "scale.json"
MODES = ("in_memory", "disk_offloaded")
RECIPES = {
    "rtn": [{"method": "rtn", "params": {"bits": 4, "group_size": 64}}],
    "gptq": [{"method": "gptq", "params": {"bits": 4, "group_size": 64}}],
}
MAX_WALL_RATIO = 1.5


def job_body(name: str) -> dict[str, Any]:
    return {
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "recipe": RECIPES[name],
        "calibration": {"num_samples": 16, "max_seq_length": 256},
        "evaluation": {"max_tokens": 4096, "efficiency": {"enabled": False}},
        "device": "cpu",
    }


def _seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    return round((datetime.fromisoformat(job["finished_at"]) - started).total_seconds(), 2)


def weight_files(objects: Path, job_id: str) -> dict[str, Path]:
    """The published artifact's safetensors files (file:// object store), by name."""
    found = sorted(objects.rglob(f"jobs/{job_id}/*/model/*.safetensors"))
    return {path.name: path for path in found}


def run_mode(mode: str, names: list[str], root: Path) -> dict[str, Any]:
    data = root / mode
    stack = EmbeddedStack(data, free_port(), extra_env={"WORKER_EXECUTION_MODE": mode})
    key = stack.start()
    rows: dict[str, Any] = {}
    try:
        with httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            for name in names:
                job, report = run_reported_job(client, f"{name}/{mode}", job_body(name), 2)
                files = weight_files(data / "objects", job["id"])
                rows[name] = {
                    "job_id": job["id"],
                    "plan_mode": report["memory"]["plan"]["mode"],
                    "seconds": _seconds(job),
                    "phase_seconds": report["timings_s"],
                    "files": {
                        n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()
                    },
                    "paths": {n: str(p) for n, p in files.items()},
                    "compressed": _perplexities(report["compressed"]),
                    "original": _perplexities(report["original"]),
                    "load_check": report["load_check"],
                    "peak_rss_bytes": max(
                        p["peak_above_start_bytes"] for p in report["memory"]["phases"].values()
                    ),
                }
    finally:
        stack.stop()
    return rows


def _perplexities(section: dict[str, Any]) -> dict[str, Any]:
    return {
        key: section.get(key)
        for key in ("perplexity", "perplexity_general", "parameters", "checkpoint_bytes")
        if key in section
    }


def tensors_equal(first: dict[str, str], second: dict[str, str]) -> bool:
    """Every tensor of one artifact equal (name, dtype, value) in the other."""
    import torch
    from safetensors.torch import load_file

    def all_of(paths: dict[str, str]) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for path in paths.values():
            tensors.update(load_file(path))
        return tensors

    a, b = all_of(first), all_of(second)
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RECIPES))
    args = parser.parse_args()
    names = [args.only] if args.only else list(RECIPES)
    with tempfile.TemporaryDirectory(prefix="squash-offload-eq-") as tmp:
        by_mode = {mode: run_mode(mode, names, Path(tmp)) for mode in MODES}
        rows: dict[str, Any] = {}
        for name in names:
            memory, disk = by_mode["in_memory"][name], by_mode["disk_offloaded"][name]
            same_files = memory["files"] == disk["files"]
            equal = same_files or tensors_equal(memory["paths"], disk["paths"])
            for row in (memory, disk):
                row.pop("paths")
            rows[name] = {
                "in_memory": memory,
                "disk_offloaded": disk,
                "weight_files_sha256_equal": same_files,
                "tensors_equal": equal,
                "perplexity_equal": memory["compressed"] == disk["compressed"]
                and memory["original"] == disk["original"],
                "wall_time_ratio": round(disk["seconds"] / memory["seconds"], 3),
                "peak_rss_ratio": round(disk["peak_rss_bytes"] / memory["peak_rss_bytes"], 3),
            }
    print(
        "\n| recipe | files sha256 equal | tensors equal | perplexity equal | in memory | "
        "offloaded | wall ratio | peak RSS in memory | offloaded |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        memory, disk = row["in_memory"], row["disk_offloaded"]
        print(
            f"| {name} | {row['weight_files_sha256_equal']} | {row['tensors_equal']} | "
            f"{row['perplexity_equal']} ({memory['compressed'].get('perplexity')}) | "
            f"{memory['seconds']} s | {disk['seconds']} s | {row['wall_time_ratio']} | "
            f"{memory['peak_rss_bytes'] / 1e9:.2f} GB | {disk['peak_rss_bytes'] / 1e9:.2f} GB |"
        )
    failures = []
    for name, row in rows.items():
        if row["disk_offloaded"]["plan_mode"] != "disk_offloaded":
            failures.append(
                f"{name}: the offloaded run planned {row['disk_offloaded']['plan_mode']}"
            )
        if not row["tensors_equal"]:
            failures.append(f"{name}: the artifacts' tensors differ")
        if not row["perplexity_equal"]:
            failures.append(f"{name}: the perplexities differ")
        if row["wall_time_ratio"] > MAX_WALL_RATIO:
            failures.append(
                f"{name}: offloaded wall time {row['wall_time_ratio']}x "
                f"(target <= {MAX_WALL_RATIO}x)"
            )
    worst = max(rows.values(), key=lambda r: r["wall_time_ratio"])
    summary = {
        "offload_tensors_equal": all(r["tensors_equal"] for r in rows.values()),
        "offload_wall_time_ratio": worst["wall_time_ratio"],
    }
    if SCALE_RESULTS.exists():  # scale.json carries the offload fields
        scale = json.loads(SCALE_RESULTS.read_text())
        SCALE_RESULTS.write_text(json.dumps({**scale, **summary}, indent=2) + "\n")
    write_results(
        RESULTS,
        {
            "model": "SmolLM2-135M-Instruct",
            "target_wall_time_ratio": MAX_WALL_RATIO,
            **summary,
            "recipes": rows,
        },
        failures,
    )


if __name__ == "__main__":
    main()
