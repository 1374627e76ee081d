"""Job bodies the tests submit, and waiting for jobs over the HTTP API."""

from __future__ import annotations

from typing import Any

from tests.support.services import WorkerProcess, wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_for_state(
    api: Any,
    headers: dict[str, str],
    job_id: str,
    states: set[str] = TERMINAL,
    *,
    timeout: float = 180,
    worker: WorkerProcess | None = None,
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job is in one of `states`; shows the worker log on
    timeout."""
    try:
        return wait_until(
            lambda: (
                (job := api.get(f"/v1/jobs/{job_id}", headers=headers).json())["state"] in states
                and job
            ),
            timeout=timeout,
            interval=0.3,
            what=f"job {job_id} to reach {sorted(states)}",
        )
    except TimeoutError:
        if worker:
            print(worker.tail())  # noqa: T201 - shown only when the test fails
        raise


def wait_for_stage(api: Any, headers: dict[str, str], job_id: str, stage: str) -> None:
    wait_until(
        lambda: api.get(f"/v1/jobs/{job_id}", headers=headers).json()["stage"] == stage,
        timeout=120,
        what=f"job {job_id} to reach stage {stage}",
    )


# Small but real serving measurement: a fresh process per model, 2 timed runs.
TINY_EFFICIENCY = {"prompt_tokens": 16, "new_tokens": 4, "batch_size": 2, "repetitions": 2}


def tiny_job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"kind": "local", "path": "tiny-llama"},
        "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 32}}],
        "evaluation": {
            "max_tokens": 2048,
            "context_length": 128,
            "prompts": ["def f(x):"],
            "max_new_tokens": 4,
            # Off: the probe starts a fresh process per model (seconds each, twice a job, in
            # every test). Tests that read its figures ask for TINY_EFFICIENCY.
            "efficiency": {"enabled": False},
            "layer_error_tokens": 64,
        },
        "device": "cpu",
    }
    body.update(overrides)
    return body


def search_body(**search: Any) -> dict[str, Any]:
    """A search on the tiny model: three candidates under 4.25 bits, short evaluations."""
    body = tiny_job(kind="search", calibration={"num_samples": 8, "max_seq_length": 64})
    del body["recipe"]
    body["search"] = {
        "budget": {"max_bits_per_weight": 4.25},
        "max_candidates": 3,
        "candidate_eval_tokens": 512,
        "sensitivity_samples": 4,
        **search,
    }
    return body


def slow_job(**overrides: Any) -> dict[str, Any]:
    """A tiny-model job that spends tens of seconds in evaluation (stride 1), with check points
    every window: for cancel and crash tests."""
    return tiny_job(
        evaluation={
            "max_tokens": 40000,
            "context_length": 32,
            "stride": 1,
            "prompts": ["x"],
            "max_new_tokens": 2,
        },
        **overrides,
    )
