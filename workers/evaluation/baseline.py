"""The original model's metrics, computed once per (model, evaluation spec, device, code) and
reused by every later job on that model.

Kept in the object store under `baselines/<key>.json`: workers already write there, the
entry is one small JSON document written in one PUT (readers never see half of it), and
`DELETE baselines/` is a safe way to force recomputation. The key is a sha256 over everything
the figures depend on: the weights' content hash (not the source's name: a moved branch gets a
new entry), the evaluation data's hash and the evaluation settings, the device (a CPU's and an
H100's latencies differ), and the library versions and report version that computed them.
Only complete baselines are stored: if any evaluation of the original failed, the next job
tries again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import structlog

from app.config import Settings
from app.storage import ObjectNotFound, make_store

log = structlog.get_logger()
PREFIX = "baselines"
# Evaluation settings that change the original's figures (the rest, e.g. layer_error_tokens
# or per_stage, concern the compressed model only).
KEY_FIELDS = (
    "perplexity",
    "max_tokens",
    "context_length",
    "stride",
    "prompts",
    "max_new_tokens",
    "tasks",
    "efficiency",
)


def baseline_key(
    *,
    weights_sha256: str,
    evaluation: dict[str, Any],
    dataset_sha256: str,
    device: str,
    versions: dict[str, str],
    report_version: int,
) -> str:
    material = {
        "weights_sha256": weights_sha256,
        "evaluation": {k: evaluation.get(k) for k in KEY_FIELDS},
        "dataset_sha256": dataset_sha256,
        "device": device,
        "versions": versions,
        "report_version": report_version,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load(settings: Settings, key: str) -> dict[str, Any] | None:
    """The cached metrics, or None (missing, unreadable or corrupt: recompute)."""
    try:
        raw = make_store(settings).get_bytes(f"{PREFIX}/{key}.json")
        entry = json.loads(raw)
    except ObjectNotFound:
        return None
    except Exception:
        log.warning("baseline.unreadable", key=key, exc_info=True)
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return entry


def store(
    settings: Settings, key: str, metrics: dict[str, Any], evaluations: list[str], job_id: str
) -> None:
    entry = {"key": key, "computed_by_job": job_id, "metrics": metrics, "evaluations": evaluations}
    try:
        make_store(settings).put_bytes(
            f"{PREFIX}/{key}.json", json.dumps(entry, default=str).encode()
        )
    except Exception:
        log.warning("baseline.store_failed", key=key, exc_info=True)
