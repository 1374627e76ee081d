"""schemathesis hooks for tests/contract/ (loaded through SCHEMATHESIS_HOOKS).

In the stateful phase a POST /v1/jobs body is made one the service accepts, so the links
POST → GET → events → cancel are really followed: random recipes almost never pass the
per-method checks JSON Schema cannot express (tests/contract/schemathesis.toml). The other
phases send the generated bodies as they are.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from schemathesis.generation.meta import TestPhase

LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def acceptable_job(body: dict[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, dict) or model.get("kind") not in ("huggingface", "builtin"):
        model = {"kind": "builtin", "name": "smollm2-135m-instruct"}
    model = {**model, "trust_remote_code": False} if model["kind"] == "huggingface" else model
    labels = body.get("labels") if isinstance(body.get("labels"), dict) else {}
    return {
        "model": model,
        "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 64}}],
        "labels": {
            k: v
            for k, v in labels.items()
            if LABEL_KEY.match(k) and "\x00" not in v and len(v) <= 255
        },
        "priority": body.get("priority", 5),
        "device": "gpu",  # parked: no worker consumes this test's gpu queue
    }


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    stateful = case.meta is not None and case.meta.phase.name == TestPhase.STATEFUL
    operation = case.operation
    submits = (operation.method.upper(), operation.path) == ("POST", "/v1/jobs")
    if stateful and submits and isinstance(case.body, dict):
        case.body = acceptable_job(case.body)
