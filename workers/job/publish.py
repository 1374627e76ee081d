"""Publish a finished attempt: render the report page, upload every file and verify it, write
the manifest last, and hand the runner the values its final commit writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from app.artifacts.manifest import (
    MANIFEST_NAME,
    RECIPE_NAME,
    REPORT_HTML_NAME,
    REPORT_NAME,
    attempt_prefix,
    build_manifest,
)
from app.db import session_scope
from app.reports.html import render as render_html
from app.reports.points import original_point, peer_points, point_of
from app.reports.schema import Report
from app.storage import ObjectStore, make_store, sha256_file
from workers.context import JobContext
from workers.errors import TransientFailure
from workers.job import progress
from workers.job.run import JobRun

UPLOAD_TRIES = 3
PAGE_ITSELF = frozenset({RECIPE_NAME, REPORT_NAME, REPORT_HTML_NAME})  # the page lists the rest
UPLOAD_BACKOFF_S = 1.0


def finish(
    run: JobRun,
    report: Report,
    *,
    model_dir: Path | None,
    extra_files: list[tuple[str, Path]] | None = None,
) -> dict[str, Any]:
    """Publish the report (and the model, for a compress job; `extra_files`, as (artifact
    path, local file), beside it). Returns the job-row values: the artifacts, their prefix and
    the summary as the job's `metrics`."""
    ctx, data = run.ctx, run.data
    provenance = {
        "model": report.model.to_json(),
        "calibration_sha256": data.calibration_sha256,
        "evaluation_sha256": data.eval_corpus.sha256,
        "recipe": [stage.model_dump(mode="json") for stage in report.recipe],
        "seed": report.seed,
        "device": report.device,
        "libraries": report.libraries,
    }
    with session_scope(ctx.settings.database_url) as session:
        points = peer_points(session, ctx.job_id, report.summary)
    stages = [stage.model_dump(mode="json") for stage in report.recipe]
    mine = point_of(report.job_id, stages, report.summary)
    origin = original_point(report.summary)
    points = [*([origin] if origin else []), *points]
    published = publish(
        ctx,
        staging=run.scratch,
        model_dir=model_dir,
        extra_files=extra_files or [],
        report=report.to_json(),
        render_page=partial(render_html, report, [*points, mine] if mine else points),
        recipe=[stage.model_dump(mode="json") for stage in report.recipe],
        provenance=provenance,
    )
    return {**published, "metrics": report.summary.to_json()}


def publish(
    ctx: JobContext,
    *,
    staging: Path,
    model_dir: Path | None,
    extra_files: list[tuple[str, Path]] | None = None,
    report: dict[str, Any],
    render_page: Callable[[list[dict[str, Any]]], str],
    recipe: list[dict[str, Any]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Upload every file, verify it, then write the manifest last. Returns the job-row values.
    An evaluate job has no `model_dir`: it publishes its report only. The report page is
    rendered once the model files are up, so it lists them with their digests."""
    store = make_store(ctx.settings)
    prefix = attempt_prefix(ctx.job_id, ctx.generation)
    staged = staging / "publish"
    staged.mkdir(parents=True, exist_ok=True)
    (staged / RECIPE_NAME).write_text(json.dumps(recipe, indent=2))
    (staged / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str))
    local_files = (
        [
            (f"model/{p.relative_to(model_dir)}", p)
            for p in sorted(model_dir.rglob("*"))
            if p.is_file()
        ]
        if model_dir is not None
        else []
    )
    local_files += extra_files or []
    local_files += [(name, staged / name) for name in (RECIPE_NAME, REPORT_NAME, REPORT_HTML_NAME)]
    files: list[dict[str, Any]] = []
    for index, (path, local) in enumerate(local_files):
        if path == REPORT_HTML_NAME:
            local.write_text(render_page([f for f in files if f["path"] not in PAGE_ITSELF]))
        ctx.check()
        key = f"{prefix}/{path}"
        size, digest = local.stat().st_size, sha256_file(local)
        upload_verified(ctx, store, key, local, path, digest)
        files.append({"path": path, "object_key": key, "size": size, "sha256": digest})
        ctx.fault_point("upload")  # the first file is stored, the rest are not
        ctx.progress("upload", progress.UPLOAD.at((index + 1) / len(local_files)))
    manifest = build_manifest(job_id=ctx.job_id, files=files, provenance=provenance)
    ctx.check()
    store.put_bytes(f"{prefix}/{MANIFEST_NAME}", json.dumps(manifest, indent=2).encode())
    return {"artifacts": files, "artifact_prefix": prefix}


def upload_verified(
    ctx: JobContext, store: ObjectStore, key: str, local: Path, path: str, digest: str
) -> None:
    """Upload one file and read it back: its stored sha256 must equal the local one. boto3
    already retries refused connections and 5xx answers (standard mode, 5 tries); this loop
    also covers bytes that arrived changed. Gives up with TransientFailure (the job is retried,
    then fails naming the file and the last error)."""
    error = ""
    for attempt in range(UPLOAD_TRIES):
        if attempt:
            time.sleep(UPLOAD_BACKOFF_S * 2 ** (attempt - 1))
            ctx.check()
        try:
            store.put_file(key, local)
            stored = store.stored_sha256(key)
        except Exception as exc:  # noqa: BLE001 - any store error: try again, then report it
            error = f"upload of {path} failed: {exc}"
            continue
        if stored == digest:
            return
        error = f"upload of {path} corrupted: stored sha256 {stored}, local {digest}"
        ctx.warn(f"{error} (try {attempt + 1} of {UPLOAD_TRIES})")
    raise TransientFailure(error)
