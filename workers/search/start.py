"""A search's first attempt: score every layer, plan the candidates, and hand them to the queue
as child jobs.

The candidates, the search's state and its move to `waiting` commit in one transaction fenced
by this attempt's lease: a search cancelled (or taken over) meanwhile inserts no child. The
children are then sent like any job; nothing holds a worker while they run, so N workers run N
candidates at once (the distribution is Celery's). The API's background loop wakes the search
when they have ended (app/search/wake.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta
from typing import Any, NoReturn

from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs import repository
from app.jobs.dispatch import enqueue
from app.jobs.schemas import EfficiencySpec, JobSpec
from app.jobs.state import ErrorCode, JobState
from app.models import Job  # every table registered: inserting a job resolves its tenant
from app.recipes import MethodParams, RotateParams, StageIn, validate_recipe
from workers.errors import JobFailure, LeaseLost, Suspended
from workers.evaluation.measure import parameter_count
from workers.job.run import JobRun
from workers.methods.recipe import run_stages
from workers.search.allocation import BudgetTooSmall
from workers.search.candidates import Candidate, budget_bits, grid, plan_candidates
from workers.search.sensitivity import LayerScores, score_layers

SENSITIVITY = (2.0, 18.0)  # the search's progress span while scoring


def start_search(run: JobRun) -> NoReturn:
    ctx, spec = run.ctx, run.job.spec
    search = spec.search
    assert search is not None  # read_spec: kind search has one
    deadline = utcnow() + timedelta(seconds=search.time_budget_s)
    started = time.perf_counter()
    samples = run.data.calibration_ids[: search.sensitivity_samples]
    if not samples:
        raise JobFailure(ErrorCode.DATA_ERROR, "calibration: no sample for the sensitivity pass")
    if run.source.offloaded:
        # The Fisher pass backpropagates through the whole model at once.
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            "a search of a model this large (held disk-offloaded) is not built yet: its "
            "sensitivity pass needs the model in memory",
        )
    settings = grid(search.budget.target_runtime)
    low, high = SENSITIVITY
    rotating = "rotation" in search.families
    passes = 2 if rotating else 1

    def on_sample(index: int, total: int, done_passes: int = 0) -> None:
        share = (done_passes + index / total) / passes
        ctx.progress("sensitivity", low + (high - low) * share)

    model = run.source.model
    with ctx.timed("sensitivity"):
        plain = score_layers(model, samples, settings, on_sample=on_sample)
        total = parameter_count(model)
        rotated = None
        if rotating:
            # Rotation changes every layer's weights: the rotated candidates are allocated on
            # the rotated model's own scores.
            stages: list[tuple[str, MethodParams]] = [("rotate", RotateParams())]
            try:
                model = run_stages(model, run.source.tokenizer, stages, samples, ctx).model
            except JobFailure as exc:  # an architecture the rotation does not cover
                ctx.warn(f"no rotated candidates: {exc.message}")
            else:
                rotated = score_layers(
                    model, samples, settings, on_sample=lambda i, n: on_sample(i, n, 1)
                )
    try:
        budget = budget_bits(search, plain, total)
        candidates = plan_candidates(search, plain, rotated, budget)
    except BudgetTooSmall as exc:
        raise JobFailure(ErrorCode.INVALID_RECIPE, f"search.budget: {exc}") from exc
    run.source.release()
    state = {
        "deadline": deadline.isoformat(),
        "budget_bits_per_weight": budget,
        "sensitivity_seconds": round(time.perf_counter() - started, 3),
        "sensitivity": sensitivity_table(plain),
        "candidates": [c.to_json() for c in candidates],
    }
    hand_over(run, candidates, state)


def sensitivity_table(layers: list[LayerScores]) -> list[dict[str, Any]]:
    return [
        {
            "layer": row.name,
            "parameters": row.parameters,
            "scores": {s.label: float(f"{v:.4g}") for s, v in sorted(row.scores.items())},
        }
        for row in layers
    ]


def child_spec(spec: JobSpec, candidate: Candidate) -> dict[str, Any]:
    """An ordinary compress job: the search's model, data and seed, the candidate's recipe
    (defaults filled in, as the API does), and a short evaluation against the original."""
    assert spec.search is not None
    stages = validate_recipe([StageIn.model_validate(stage) for stage in candidate.recipe])
    evaluation = spec.evaluation.model_copy(
        update={
            "max_tokens": min(spec.search.candidate_eval_tokens, spec.evaluation.max_tokens),
            "compare_original": True,  # the baseline cache computes it once for all of them
            # Only the task a tolerance names (each costs every candidate its run).
            "tasks": [t for t in spec.evaluation.tasks if t.name == accuracy_task(spec)],
            # Measured only when a speed limit needs it (a fresh process per model).
            "efficiency": spec.evaluation.efficiency
            if spec.search.budget.min_decode_tokens_per_s
            else EfficiencySpec(enabled=False),
            "layer_error_tokens": 0,
            "per_stage": False,
        }
    )
    child = JobSpec(
        kind="compress",
        model=spec.model,
        recipe=[StageIn.model_validate(stage.as_json()) for stage in stages],
        calibration=spec.calibration,
        evaluation=evaluation,
        output=spec.output,
        seed=spec.seed,
    )
    return child.model_dump(mode="json")


def hand_over(run: JobRun, candidates: list[Candidate], state: dict[str, Any]) -> NoReturn:
    """Insert the children and move the search to `waiting` in one fenced transaction, then
    send the children."""
    ctx = run.ctx
    sent: list[tuple[uuid.UUID, str, int]] = []
    try:
        with session_scope(ctx.settings.database_url) as session:
            parent = repository.get_job(session, ctx.job_id)
            if parent is None:
                raise LeaseLost(str(ctx.job_id))
            # The search's labels too: `?label=team=x` lists its candidates with it.
            labels = {label.key: label.value for label in parent.labels}
            for candidate, planned in zip(candidates, state["candidates"], strict=True):
                child = new_child(parent, child_spec(run.job.spec, candidate), ctx.settings)
                repository.insert_job(session, child, labels)
                planned["job_id"] = str(child.id)
                sent.append((child.id, child.queue, child.priority))
            if run.job.spec.evaluation.compare_original:
                child = new_child(parent, original_spec(run.job.spec), ctx.settings)
                repository.insert_job(session, child, labels)
                state["original_job_id"] = str(child.id)
                sent.append((child.id, child.queue, child.priority))
            moved = repository.transition(
                session,
                ctx.job_id,
                JobState.WAITING,
                sources=[JobState.RUNNING],
                generation=ctx.generation,
                message=f"{len(candidates)} candidates queued",
                search=state,
                stage="candidates",
                progress=SENSITIVITY[1],
                progress_detail={"candidates": len(candidates), "ended": 0},
                worker_id=None,
                lease_expires_at=None,
            )
            if not moved:
                raise _NotMoved
    except _NotMoved:
        ctx.beat_once()  # cancelled, or another attempt owns it: check() says which
        ctx.check()
        raise LeaseLost(str(ctx.job_id)) from None
    for child_id, queue, priority in longest_first(sent, candidates):
        with session_scope(ctx.settings.database_url) as session:
            # A failed send is the reaper's to retry (queued, never marked enqueued).
            enqueue(session, ctx.settings, child_id, queue=queue, priority=priority)
    raise Suspended(f"{len(sent)} candidates queued")


def accuracy_task(spec: JobSpec) -> str | None:
    drop = spec.search.quality.max_accuracy_drop if spec.search else None
    return drop.task if drop else None


def original_spec(spec: JobSpec) -> dict[str, Any]:
    """The original's full evaluation, as an evaluate job beside the candidates: it fills the
    baseline cache (workers/evaluation/baseline.py) under the key the search's second attempt
    reads, so that attempt measures only the winner. Should it fail, the second attempt
    measures the original itself."""
    evaluate = JobSpec(
        kind="evaluate",
        model=spec.model,
        calibration=spec.calibration,
        evaluation=spec.evaluation,
        seed=spec.seed,
    )
    return evaluate.model_dump(mode="json")


def longest_first(
    sent: list[tuple[uuid.UUID, str, int]], candidates: list[Candidate]
) -> list[tuple[uuid.UUID, str, int]]:
    """The order the children are sent in (one queue, first in first out): the candidates
    that rotate first (a rotation and an imatrix pass more), then the others, then the
    original's evaluation, so N workers end close together rather than one starting the
    longest candidate last."""
    rotates = [c.recipe[0]["method"] == "rotate" for c in candidates]
    ranked = sorted(range(len(candidates)), key=lambda i: not rotates[i])
    return [sent[i] for i in ranked] + sent[len(candidates) :]


class _NotMoved(Exception):
    pass


def new_child(parent: Job, spec: dict[str, Any], settings: Settings) -> Job:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return Job(
        tenant_id=parent.tenant_id,
        parent_id=parent.id,
        state=JobState.QUEUED.value,
        device=parent.device,
        queue=parent.queue,  # the same model: the pool the search's plan chose
        priority=parent.priority,
        spec=spec,
        request_hash=digest,
        max_attempts=settings.max_attempts,
    )
