"""Job bodies the tests submit."""

from __future__ import annotations

from typing import Any


def tiny_job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"kind": "local", "path": "tiny-llama"},
        "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 32}}],
        "evaluation": {
            "max_tokens": 2048,
            "context_length": 128,
            "prompts": ["def f(x):"],
            "max_new_tokens": 4,
        },
        "device": "cpu",
    }
    body.update(overrides)
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
