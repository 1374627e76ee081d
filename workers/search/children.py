"""A search's child jobs: their specs, their rows, and putting them in the queue.

Children are ordinary jobs (`parent_id` set): the candidates are compress jobs, the original's
full evaluation an evaluate job. A child is known by its request hash (its spec's digest), so
an attempt that inserts children again, after a retry, finds and reuses those inserted before
rather than running them twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.jobs import repository
from app.jobs.dispatch import enqueue
from app.jobs.schemas import EfficiencySpec, JobSpec
from app.jobs.state import JobState
from app.models import Job  # every table registered: inserting a job resolves its tenant
from app.recipes import StageIn, validate_recipe
from app.search.repository import children
from workers.search.candidates import Candidate


def accuracy_task(spec: JobSpec) -> str | None:
    drop = spec.search.quality.max_accuracy_drop if spec.search else None
    return drop.task if drop else None


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


def request_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class Inserted:
    """Child job ids by spec digest, and those inserted now (to send once committed)."""

    ids: dict[str, uuid.UUID] = field(default_factory=dict)
    to_send: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)


def insert_children(
    session: Session, parent: Job, specs: list[dict[str, Any]], settings: Settings
) -> Inserted:
    """Insert each spec as a child of `parent` unless one with the same spec exists already
    (the caller's transaction, which fences it, commits them)."""
    existing = {child.request_hash: child.id for child in children(session, parent.id)}
    # The search's labels too: `?label=team=x` lists its candidates with it.
    labels = {label.key: label.value for label in parent.labels}
    inserted = Inserted()
    for spec in specs:
        digest = request_hash(spec)
        if digest in existing:
            inserted.ids[digest] = existing[digest]
            continue
        child = Job(
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
        repository.insert_job(session, child, labels)
        existing[digest] = inserted.ids[digest] = child.id
        inserted.to_send.append((child.id, child.queue, child.priority))
    return inserted


def send(settings: Settings, jobs: list[tuple[uuid.UUID, str, int]]) -> None:
    """Send committed children, in this order (one queue, first in first out)."""
    for child_id, queue, priority in jobs:
        with session_scope(settings.database_url) as session:
            # A failed send is the reaper's to retry (queued, never marked enqueued).
            enqueue(session, settings, child_id, queue=queue, priority=priority)


def rotating_first(
    jobs: list[tuple[uuid.UUID, str, int]], rotating: set[uuid.UUID]
) -> list[tuple[uuid.UUID, str, int]]:
    """The candidates that rotate (a rotation and an imatrix pass more) before the others, so
    N workers end close together rather than one starting the longest candidate last."""
    return sorted(jobs, key=lambda job: job[0] not in rotating)
