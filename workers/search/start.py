"""A search's first attempt: score every layer, plan the candidates, and hand them to the queue
as child jobs.

What needs no score goes first: the original's full evaluation and the uniform candidate (it
needs only the layers' sizes) are inserted and sent before the sensitivity pass, so a second
worker runs them while this one scores. The other candidates, the search's state and its move
to `waiting` then commit in one transaction; both inserts are fenced by this attempt's lease (a
search cancelled or taken over meanwhile inserts no child, and a cancel cancels the children
already in). A retried first attempt finds the children inserted before and reuses them
(workers/search/children.py). Nothing holds a worker while the children run, so N workers run
N candidates at once (the distribution is Celery's). The search is woken when they have ended
(app/search/wake.py).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any, NoReturn

from app.config import Settings
from app.db import session_scope, utcnow
from app.jobs import repository
from app.jobs.state import ErrorCode, JobState
from app.recipes import MethodParams, RotateParams
from app.search.repository import save_state
from workers.errors import JobFailure, LeaseLost, Suspended
from workers.evaluation.measure import parameter_count
from workers.job.run import JobRun
from workers.methods.recipe import run_stages
from workers.search.allocation import BudgetTooSmall
from workers.search.candidates import (
    Candidate,
    budget_bits,
    grid,
    plan_candidates,
    uniform_candidate,
    uniform_runs_early,
)
from workers.search.children import (
    child_spec,
    insert_children,
    original_spec,
    request_hash,
    rotating_first,
    send,
)
from workers.search.gguf_plan import gguf_candidates
from workers.search.sensitivity import LayerScores, linear_shapes, score_layers

SENSITIVITY = (2.0, 18.0)  # the search's progress span while scoring


def start_search(run: JobRun) -> NoReturn:
    ctx, spec = run.ctx, run.job.spec
    search = spec.search
    assert search is not None  # read_spec: kind search has one
    deadline = search_deadline(ctx.settings, ctx.job_id, search.time_budget_s)
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
    model = run.source.model
    total = parameter_count(model)
    shapes = linear_shapes(model)
    try:
        budget = budget_bits(search, shapes, total)
    except BudgetTooSmall as exc:
        raise JobFailure(ErrorCode.INVALID_RECIPE, f"search.budget: {exc}") from exc
    uniform = uniform_candidate(shapes, budget, settings)
    early = [child_spec(spec, uniform)] if uniform and uniform_runs_early(search) else []
    if spec.evaluation.compare_original:
        early.insert(0, original_spec(spec))  # the shortest first: it frees a worker soonest
    early_ids = send_early(run, early, deadline)
    if search.budget.target_runtime == "gguf":
        plan_gguf(run, shapes, budget, deadline, started, early_ids)
    low, high = SENSITIVITY
    rotating = "rotation" in search.families
    passes = 2 if rotating else 1

    def on_sample(index: int, total: int, done_passes: int = 0) -> None:
        share = (done_passes + index / total) / passes
        ctx.progress("sensitivity", low + (high - low) * share)

    with ctx.timed("sensitivity"):
        plain = score_layers(model, samples, settings, on_sample=on_sample)
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
    candidates = plan_candidates(search, plain, rotated, budget)  # the budget fits: checked
    run.source.release()
    state = {
        "deadline": deadline.isoformat(),
        "budget_bits_per_weight": budget,
        "sensitivity_seconds": round(time.perf_counter() - started, 3),
        "sensitivity": sensitivity_table(plain),
        "candidates": [c.to_json() for c in candidates],
        "sent_before_scoring": early_ids,
    }
    hand_over(run, candidates, state)


def plan_gguf(
    run: JobRun,
    shapes: list[LayerScores],
    budget: float,
    deadline: datetime,
    started: float,
    early_ids: list[str],
) -> NoReturn:
    """llama.cpp's presets: llama.cpp picks each tensor's type itself, so there is nothing to
    allocate and no sensitivity pass to run."""
    assert run.job.spec.search is not None
    model: Any = run.source.model  # a transformers model: get_input_embeddings() is its API
    embedding = int(model.get_input_embeddings().weight.numel())
    try:
        candidates = gguf_candidates(run.job.spec.search, shapes, embedding, budget)
    except BudgetTooSmall as exc:
        raise JobFailure(ErrorCode.INVALID_RECIPE, f"search.budget: {exc}") from exc
    run.source.release()
    run.ctx.warn("target runtime gguf: llama.cpp's presets, no per-layer allocation to score")
    state = {
        "deadline": deadline.isoformat(),
        "budget_bits_per_weight": budget,
        "sensitivity_seconds": round(time.perf_counter() - started, 3),
        "sensitivity": [],
        "candidates": [c.to_json() for c in candidates],
        "sent_before_scoring": early_ids,
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


def search_deadline(settings: Settings, search_id: uuid.UUID, time_budget_s: int) -> datetime:
    """`time_budget_s` from the search's first attempt: a retried one keeps its deadline."""
    with session_scope(settings.database_url) as session:
        job = repository.get_job(session, search_id)
        earlier = (job.search or {}).get("deadline") if job is not None else None
    if earlier:
        return datetime.fromisoformat(earlier)
    return utcnow() + timedelta(seconds=time_budget_s)


def send_early(run: JobRun, specs: list[dict[str, Any]], deadline: datetime) -> list[str]:
    """Record the deadline, insert the children that need no sensitivity score (both fenced
    by the lease) and send them; returns their ids."""
    ctx = run.ctx
    try:
        with session_scope(ctx.settings.database_url) as session:
            state = {"deadline": deadline.isoformat()}
            parent = repository.get_job(session, ctx.job_id)
            if parent is None or not save_state(session, ctx.job_id, ctx.generation, state):
                raise _NotMoved
            inserted = insert_children(session, parent, specs, ctx.settings)
    except _NotMoved:
        _stopped(run)
    send(ctx.settings, inserted.to_send)
    return [str(job_id) for job_id in inserted.ids.values()]


def hand_over(run: JobRun, candidates: list[Candidate], state: dict[str, Any]) -> NoReturn:
    """Insert the children not in yet and move the search to `waiting` in one fenced
    transaction, then send them."""
    ctx, spec = run.ctx, run.job.spec
    specs = [child_spec(spec, candidate) for candidate in candidates]
    original = original_spec(spec) if spec.evaluation.compare_original else None
    try:
        with session_scope(ctx.settings.database_url) as session:
            parent = repository.get_job(session, ctx.job_id)
            if parent is None:
                raise LeaseLost(str(ctx.job_id))
            inserted = insert_children(
                session, parent, specs + ([original] if original else []), ctx.settings
            )
            for planned, child in zip(state["candidates"], specs, strict=True):
                planned["job_id"] = str(inserted.ids[request_hash(child)])
            if original is not None:
                state["original_job_id"] = str(inserted.ids[request_hash(original)])
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
        _stopped(run)
    rotating = {
        inserted.ids[request_hash(child)]
        for child, candidate in zip(specs, candidates, strict=True)
        if candidate.recipe[0]["method"] == "rotate"
    }
    send(ctx.settings, rotating_first(inserted.to_send, rotating))
    raise Suspended(f"{len(candidates)} candidates queued")


def _stopped(run: JobRun) -> NoReturn:
    run.ctx.beat_once()  # cancelled, or another attempt owns it: check() says which
    run.ctx.check()
    raise LeaseLost(str(run.ctx.job_id)) from None


class _NotMoved(Exception):
    pass
