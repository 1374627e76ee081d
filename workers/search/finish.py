"""A search's second attempt, once its candidates have ended: read what each measured on its own
files, pick the winner, fetch its artifact (verified against the digests it was published
with) and hand it to the job's usual measuring and publishing: the winner gets the job's full
evaluation and is the search's artifact."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from app.artifacts import repository as artifact_repository
from app.db import session_scope
from app.jobs import repository
from app.jobs.state import ErrorCode
from app.reports.schema import Report
from app.reports.search import SearchCandidate
from app.search import repository as search_repository
from app.storage import make_store, sha256_file
from workers.errors import JobFailure, TransientFailure
from workers.job.compress import Compressed, capture_layers, measure_artifact
from workers.job.evaluate import measure_original
from workers.job.publish import finish
from workers.job.report import common_fields, compress_report
from workers.job.run import JobRun
from workers.methods.estimate import Estimate
from workers.search.pick import Limits, choose


def search_state(run: JobRun) -> dict[str, Any] | None:
    """What the first attempt stored once it handed its candidates over (None: this is a
    first attempt, perhaps a retried one that finds only the deadline)."""
    with session_scope(run.ctx.settings.database_url) as session:
        job = repository.get_job(session, run.ctx.job_id)
        state = dict(job.search or {}) if job is not None else {}
    return state if "candidates" in state else None


def accuracy_drop(summary: dict[str, Any], metric: str | None) -> float | None:
    """The original's figure less the candidate's, both from the candidate's own job."""
    if metric is None:
        return None
    theirs = (summary.get("original") or {}).get(metric)
    mine = (summary.get("compressed") or {}).get(metric)
    return None if theirs is None or mine is None else round(theirs - mine, 4)


def candidate_rows(
    run: JobRun, state: dict[str, Any], metric: str | None = None
) -> list[dict[str, Any]]:
    """Each planned candidate with its child job's outcome (its summary: read from its files).
    `metric`: the `task.metric` a tolerance names."""
    with session_scope(run.ctx.settings.database_url) as session:
        jobs = {str(j.id): j for j in search_repository.children(session, run.ctx.job_id)}
        rows = []
        for planned in state["candidates"]:
            job = jobs[planned["job_id"]]
            summary = job.metrics or {}
            rows.append(
                {
                    **planned,
                    "state": job.state,
                    "error": job.error_message,
                    "artifact_prefix": job.artifact_prefix,
                    "bits_per_quantized_weight": summary.get("bits_per_quantized_weight"),
                    "checkpoint_bytes": summary.get("compressed_checkpoint_bytes"),
                    "perplexity": summary.get("compressed_perplexity"),
                    "change_pct": summary.get("perplexity_change_pct"),
                    "decode_tokens_per_second": (summary.get("compressed") or {}).get(
                        "decode_tokens_per_second_b1"
                    ),
                    "accuracy_drop": accuracy_drop(summary, metric),
                }
            )
    return rows


def pick_winner(run: JobRun, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the winner's row, the report's search section without `sensitivity`)."""
    search = run.job.spec.search
    assert search is not None
    drop = search.quality.max_accuracy_drop
    metric = f"{drop.task}.{drop.metric}" if drop else None
    rows = candidate_rows(run, state, metric)
    limits = Limits(
        max_bits=search.budget.max_bits_per_weight,
        max_bytes=search.budget.max_checkpoint_bytes,
        min_tokens_per_s=search.budget.min_decode_tokens_per_s,
        max_increase_pct=search.quality.max_perplexity_increase_pct,
        max_accuracy_drop=drop.max_drop if drop else None,
        accuracy_metric=metric or "",
    )
    winner, why = choose(rows, limits)
    notes = [f"{r['name']}: {r['excluded']}" for r in rows if r["within_budget"] is None]
    if winner is None:
        detail = "; ".join(f"{r['name']}: {r['excluded']}" for r in rows)
        raise JobFailure(ErrorCode.NO_CANDIDATE, f"{why} ({detail})")
    for index, row in enumerate(rows):
        row["winner"] = index == winner
    keep = set(SearchCandidate.model_fields)  # the report's row, one source of truth
    section = {
        "budget": search.budget.model_dump(mode="json"),
        "quality": search.quality.model_dump(mode="json"),
        "budget_bits_per_weight": state["budget_bits_per_weight"],
        "candidate_evaluation_tokens": min(
            search.candidate_eval_tokens, run.job.spec.evaluation.max_tokens
        ),
        "candidates": [{k: v for k, v in row.items() if k in keep} for row in rows],
        "winner": rows[winner]["job_id"],
        **({"original_job_id": state["original_job_id"]} if "original_job_id" in state else {}),
        "why": why,
        "notes": notes,
        "sensitivity_seconds": state["sensitivity_seconds"],
        "sensitivity": state["sensitivity"],
    }
    for note in notes:
        run.ctx.warn(f"candidate {note}")
    return rows[winner], section


def fetch_artifact(run: JobRun, winner: dict[str, Any], into: Path) -> dict[str, Any]:
    """Download the winner's model files; returns its published report."""
    store = make_store(run.ctx.settings)
    with session_scope(run.ctx.settings.database_url) as session:
        files = [
            (a.path, a.object_key, a.sha256)
            for a in artifact_repository.list_artifacts(session, uuid.UUID(winner["job_id"]))
        ]
    report: dict[str, Any] | None = None
    for path, key, digest in files:
        run.ctx.check()
        if path == "report.json":
            report = json.loads(store.get_bytes(key))
        if not path.startswith("model/"):
            continue
        local = into / path.removeprefix("model/")
        local.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, local)
        if sha256_file(local) != digest:
            raise TransientFailure(f"the winner's {path} changed in the store since published")
    if report is None:
        raise JobFailure(ErrorCode.INTERNAL_ERROR, "the winning candidate has no report")
    return report


def finish_search(run: JobRun, estimate: Estimate, state: dict[str, Any]) -> dict[str, Any]:
    """Pick, then measure the winner's files as a compress job measures its own (the full
    evaluation, against the original) and publish them as the search's artifact."""
    winner, section = pick_winner(run, state)
    source = run.source
    captured = capture_layers(run)
    layers = int(getattr(source.model.config, "num_hidden_layers", 0))
    original = measure_original(run)
    out_dir = run.scratch / "model"
    theirs = fetch_artifact(run, winner, out_dir)
    source.release()
    counts = {key: theirs["compressed"][key] for key in ("parameters", "nonzero_parameters")}
    measured = measure_artifact(run, out_dir, counts, theirs["stages"], captured, layers)
    compressed = Compressed(theirs["stages"], theirs["format"], out_dir, *measured)
    common = {**common_fields(run, estimate), "recipe": theirs["recipe"]}
    winner_report = compress_report(run, common, original, compressed).to_json()
    report = Report.model_validate({**winner_report, "kind": "search", "search": section})
    return finish(run, report, model_dir=out_dir)
