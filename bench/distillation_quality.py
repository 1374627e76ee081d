"""Distillation on SmolLM2-135M-Instruct through the service's job API (embedded stack: API
and Celery worker processes, SQLite, filesystem broker and object store).

    .venv/bin/python -m bench.distillation_quality                  # all three losses (~45 min)
    .venv/bin/python -m bench.distillation_quality --only forward_kl

Each job: drop 6 of the 30 decoder layers (-16% parameters, chosen by block input/output
similarity: the `structured` stage), then `distill` for at most 10 minutes of training wall
time (AdamW lr 5e-5, batch 4 x 256 tokens, at most 48 steps: the issue's reference loop).
The stage reports the teacher's perplexity, the student's before and after, and the share of
the gap recovered, on the same held-out Python-docs tokens (disjoint from the training text).

Target (exits 1 if broken): the forward-KL job recovers at least the reference's 77% of the
gap. Reverse KL and GKD (beta 0.5, half the batches on student-sampled continuations) are
reported beside it. Training tokens/s is measured on this CPU.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.embedded import EmbeddedStack
from bench.common import RESULTS_DIR, run_reported_job, write_results

RESULTS = RESULTS_DIR / "distillation_quality.json"
REFERENCE_GAP_RECOVERED = 0.77  # the plain forward-KL loop, same budget and data
EVAL_TOKENS = 8192
LOSSES = {
    "forward_kl": {"loss": "forward_kl"},
    "reverse_kl": {"loss": "reverse_kl"},
    "gkd": {"loss": "gkd", "beta": 0.5, "lmbda": 0.5, "prompt_tokens": 64},
}


def job_body(loss: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
        "recipe": [
            {"method": "structured", "params": {"layers": 6}},
            {
                "method": "distill",
                "params": {
                    **loss,
                    "max_steps": 48,
                    "max_seconds": 600,
                    "learning_rate": 5e-5,
                    "batch_size": 4,
                    "seq_length": 256,
                    "checkpoint_every": 16,
                    "eval_tokens": EVAL_TOKENS,
                },
            },
        ],
        "calibration": {"num_samples": 16, "max_seq_length": 512},
        "evaluation": {
            "max_tokens": EVAL_TOKENS,
            "context_length": 512,
            "compare_original": False,  # the stage measures the teacher on the same tokens
            "max_new_tokens": 8,
        },
        "device": "cpu",
    }


def run_job(client: httpx.Client, name: str, loss: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    job, report = run_reported_job(client, name, job_body(loss), poll_s=10)
    notes = report["stages"][1]
    return {
        "job_id": job["id"],
        "job_seconds": round(time.perf_counter() - started, 1),
        "parameters": report["compressed"]["parameters"],
        "original_parameters": report["original"]["parameters"],
        "compressed_perplexity": report["summary"]["compressed_perplexity"],
        **{
            key: notes.get(key)
            for key in (
                "teacher_perplexity",
                "student_perplexity_before",
                "student_perplexity_after",
                "gap_recovered",
                "kl_to_teacher_before",
                "kl_to_teacher_after",
                "steps",
                "stopped_by",
                "train_seconds",
                "tokens_per_second",
                "loss_first",
                "loss_last",
            )
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(LOSSES))
    args = parser.parse_args()
    names = [args.only] if args.only else list(LOSSES)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="squash-bench-") as data_dir:
        stack = EmbeddedStack(Path(data_dir), free_port())
        key = stack.start()
        try:
            with httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as client:
                for name in names:
                    rows[name] = run_job(client, name, LOSSES[name])
        finally:
            stack.stop()
    print(
        "\n| loss | teacher ppl | student before | after | gap recovered | steps | "
        "train s | tokens/s |\n|---|---|---|---|---|---|---|---|"
    )
    for name, row in rows.items():
        print(
            f"| {name} | {row['teacher_perplexity']:.2f} | {row['student_perplexity_before']:.2f}"
            f" | {row['student_perplexity_after']:.2f} | {row['gap_recovered']:.1%} | "
            f"{row['steps']} | {row['train_seconds']:.0f} | {row['tokens_per_second']:.0f} |"
        )
    failures = []
    if "forward_kl" in rows:
        recovered = rows["forward_kl"]["gap_recovered"]
        ratio = recovered / REFERENCE_GAP_RECOVERED
        print(
            f"forward KL recovers {recovered:.1%} of the gap; reference loop "
            f"{REFERENCE_GAP_RECOVERED:.0%} (ratio {ratio:.2f})"
        )
        if recovered < REFERENCE_GAP_RECOVERED:
            failures.append(
                f"forward KL recovered {recovered:.1%} < reference {REFERENCE_GAP_RECOVERED:.0%}"
            )
    write_results(RESULTS, {"eval_tokens": EVAL_TOKENS, "rows": rows}, failures)


if __name__ == "__main__":
    main()
