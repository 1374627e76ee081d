"""The manifest: written last; its presence means every file it lists is complete."""

from __future__ import annotations

import uuid
from typing import Any

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
REPORT_HTML_NAME = "report.html"
RECIPE_NAME = "recipe.json"
MANIFEST_VERSION = 1


def attempt_prefix(job_id: uuid.UUID, generation: int) -> str:
    """Each attempt writes under its own prefix, so a stale worker can never overwrite the files
    of the attempt that published; the job row points at the winner."""
    return f"jobs/{job_id}/{generation}"


def checkpoint_prefix(job_id: uuid.UUID | str) -> str:
    """Training checkpoints of a job, shared by its attempts (a retry resumes from them);
    outside `jobs/` so they are never mistaken for published files."""
    return f"checkpoints/{job_id}"


def build_manifest(
    *,
    job_id: uuid.UUID,
    files: list[dict[str, Any]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "job_id": str(job_id),
        "files": [{k: f[k] for k in ("path", "size", "sha256")} for f in files],
        "provenance": provenance,
    }
