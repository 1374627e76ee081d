"""The job state machine: the one place that says which moves are legal.

queued ─▶ running ─▶ succeeded | failed | cancelled
   │         │  ▲ (lease expired: back to queued for another attempt)
   │         ▼  │
   │   cancel_requested ─▶ cancelled | failed | succeeded
   └─▶ cancelled | failed

A search job (kind `search`) has one more state: its first attempt scores the model, inserts its
candidates as child jobs and moves running ─▶ waiting, holding no worker and no lease. The API's
background loop moves it waiting ─▶ queued once every child has ended (or its time budget is
spent), and its second attempt picks the winner; cancel moves waiting ─▶ cancelled.

Every move is applied by `repository.transition`, a compare-and-set UPDATE on (id, state
[, lease_generation]) plus an event row in the same transaction, so two processes can never both
move a job.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCEL_REQUESTED = "cancel_requested"
    WAITING = "waiting"  # a search whose candidates (child jobs) are being run
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# States in which a worker holds a lease on the job.
LEASED: frozenset[JobState] = frozenset({JobState.RUNNING, JobState.CANCEL_REQUESTED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCEL_REQUESTED,
            JobState.CANCELLED,
            JobState.QUEUED,
            JobState.WAITING,
        }
    ),
    JobState.CANCEL_REQUESTED: frozenset({JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}),
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def sources_for(target: JobState) -> frozenset[JobState]:
    """Every state from which `target` may be reached."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


def check(source: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(f"{source} -> {target}")


class ErrorCode(StrEnum):
    """Stable reasons a job ends `failed`; clients switch on these."""

    INVALID_MODEL = "invalid_model"
    UNSUPPORTED = "unsupported"
    INVALID_RECIPE = "invalid_recipe"
    DATA_ERROR = "data_error"
    LOAD_CHECK_FAILED = "load_check_failed"
    WORKER_LOST = "worker_lost"
    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
    SOURCE_UNREACHABLE = "source_unreachable"  # retried first: an outage, not a bad model
    TIMEOUT = "timeout"
    NO_CANDIDATE = "no_candidate"  # a search none of whose candidates finished within budget
    INTERNAL_ERROR = "internal_error"
