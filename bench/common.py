"""What the SmolLM2 benchmarks share: the model source, the disjoint calibration / evaluation
split of the built-in corpus, perplexity and CPU decode speed, all through the worker's code."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.config import Settings
from workers.evaluation.perplexity import perplexity
from workers.models.datasets import builtin_text, split_tokens
from workers.models.sources import resolve_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


@dataclass
class Setup:
    model_path: Path
    tokenizer: Any
    eval_ids: list[int]
    calibration: list[list[int]]

    def ppl(self, model: torch.nn.Module) -> float:
        return perplexity(model, self.eval_ids, context_length=512, stride=512).perplexity

    def load_original(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32).eval()


def smollm2_setup(tokens: int, samples: int, length: int) -> Setup:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    settings = Settings(work_dir=ROOT / ".squash" / "bench-work")
    with tempfile.TemporaryDirectory() as scratch:
        source = resolve_model(
            {"kind": "builtin", "name": "smollm2-135m-instruct"}, settings, Path(scratch)
        )
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    calibration_pool, pool = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    calibration = [calibration_pool[i : i + length] for i in range(0, samples * length, length)]
    return Setup(source.path, tokenizer, pool[:tokens], calibration)


@torch.no_grad()
def decode_tokens_per_second(
    model: torch.nn.Module, prompt: list[int], batch: int, new_tokens: int = 32, runs: int = 3
) -> float:
    """Greedy decode throughput on this CPU: batch x new tokens / seconds, after a warm-up; the
    best of `runs` (a single run varied by ~15 % here from background load)."""
    inputs = torch.tensor([prompt] * batch)
    options = {"do_sample": False, "pad_token_id": 0}
    model.generate(inputs, max_new_tokens=2, min_new_tokens=2, **options)
    best = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
        best = max(best, batch * new_tokens / (time.perf_counter() - started))
    return best


def write_results(path: Path, result: dict[str, Any], failures: list[str]) -> None:
    """Save the bench's JSON (with its broken targets) and exit 1 if any target broke."""
    path.write_text(json.dumps({**result, "target_failures": failures}, indent=2) + "\n")
    if failures:
        print("TARGETS BROKEN:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print("all targets hold")


def run_reported_job(
    client: Any, name: str, body: dict[str, Any], poll_s: float = 5.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit a job through the API (an httpx client with the key), print each new progress
    line, and return (the job, its report) once it succeeded; raise if it did not."""
    job = client.post("/v1/jobs", json=body).raise_for_status().json()
    last = ""
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(poll_s)
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
        line = f"{name}: {job['stage']} {job['progress']:.0f}% {job.get('progress_detail') or {}}"
        if line != last:
            print(line, flush=True)
            last = line
    if job["state"] != "succeeded":
        raise RuntimeError(f"{name} job ended {job['state']}: {job['error']}")
    return job, client.get(f"/v1/jobs/{job['id']}/report").raise_for_status().json()
