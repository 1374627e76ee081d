"""What a running job carries: its lease (fencing token), heartbeat, progress and cancellation."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import structlog

from app.config import Settings
from app.db import session_scope
from app.jobs import repository
from app.jobs.state import JobState
from workers import faults
from workers import metrics as worker_metrics
from workers.errors import JobCancelled, LeaseLost
from workers.memory import PhaseMemory

log = structlog.get_logger()
PROGRESS_WRITE_S = 0.5


class JobContext:
    """Passed down to every stage. `check()` is the cancellation/lease check point."""

    def __init__(self, job_id: uuid.UUID, generation: int, settings: Settings) -> None:
        self.job_id = job_id
        self.generation = generation
        self.settings = settings
        self.parent_id: uuid.UUID | None = None  # the search this job is a candidate of
        self.cancel_requested = threading.Event()
        # Set when the job's own thread reached a check point after the cancel: it is winding
        # down (a last checkpoint, the cancelled commit) and the heartbeat leaves it be.
        self.cancel_acknowledged = threading.Event()
        # What the heartbeat thread calls when the job reached no check point within
        # cancel_grace_s of the cancel (set by workers/runner.py: it ends the process).
        self.on_unacknowledged_cancel: Callable[[], None] | None = None
        # When the last heartbeat read that found no cancel began: a cancel it did not see was
        # committed later, so ending the attempt at this + CANCEL_GRACE_S ends it at most the
        # grace after the request, whatever the beats' own drift under load (the stated bound,
        # HEARTBEAT_INTERVAL_S + CANCEL_GRACE_S, leaves the interval for the cancelled commit
        # and the process's exit). The job's thread has at least the grace less one interval
        # after the flag is seen to reach a check point of its own.
        self._clear_read_at = time.monotonic()
        self.lease_lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}
        self._last_write: tuple[str, float] = ("", 0.0)
        self.fault_hold: str | None = None  # workers/faults.py; None unless FAULT_INJECTION
        # Peak memory of each timed phase, once the job body sets it (workers/memory.py).
        self.memory: PhaseMemory | None = None

    # -- heartbeat ---------------------------------------------------------------------------
    def start(self) -> None:
        self._clear_read_at = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._until_next_beat()):
            started = time.monotonic()
            try:
                self._enforce_cancel()  # a deadline that came: no beat before ending
                self.beat_once()
                if not self.cancel_requested.is_set():
                    self._clear_read_at = started
                self._enforce_cancel()
            except Exception:  # database down: the next beat tries again
                log.warning("job.heartbeat_failed", job_id=str(self.job_id), exc_info=True)

    def _cancel_pending(self) -> bool:
        """A cancel the job's own thread has not acted on (and that the heartbeat may end)."""
        return (
            self.cancel_requested.is_set()
            and not self.cancel_acknowledged.is_set()
            and self.on_unacknowledged_cancel is not None
        )

    def _cancel_deadline(self) -> float:
        return self._clear_read_at + self.settings.cancel_grace_s

    def _until_next_beat(self) -> float:
        """The next beat comes at the heartbeat interval, or sooner at a pending cancel's
        deadline (so the end does not wait for the next whole interval)."""
        if not self._cancel_pending():
            return self.settings.heartbeat_interval_s
        left = self._cancel_deadline() - time.monotonic()
        return max(0.0, min(self.settings.heartbeat_interval_s, left))

    def _enforce_cancel(self) -> None:
        """A cancel the job's thread has not acted on by its deadline: it is inside one long
        call, so the heartbeat ends the attempt itself."""
        if self._cancel_pending() and time.monotonic() >= self._cancel_deadline():
            callback, self.on_unacknowledged_cancel = self.on_unacknowledged_cancel, None
            if callback is not None:
                callback()  # ends the process unless the attempt ended first

    def beat_once(self) -> None:
        with session_scope(self.settings.database_url) as session:
            state = repository.heartbeat(
                session,
                self.job_id,
                generation=self.generation,
                lease_ttl_s=self.settings.lease_ttl_s,
            )
        self._observe(state)

    def _observe(self, state: str | None) -> None:
        if state is None:
            self.lease_lost.set()
        elif state == JobState.CANCEL_REQUESTED:
            self.cancel_requested.set()

    # -- check points ------------------------------------------------------------------------
    def check(self) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost(str(self.job_id))
        if self.cancel_requested.is_set():
            self.cancel_acknowledged.set()
            raise JobCancelled(str(self.job_id))

    def progress(self, stage: str, percent: float, detail: dict[str, Any] | None = None) -> None:
        """Record progress (fenced by the lease) and act on cancellation. Writes at most once
        per PROGRESS_WRITE_S within a stage: evaluation calls this for every window. `detail`
        (a training step's loss, ETA…) replaces the job's `progress_detail`."""
        self.check()
        now = time.monotonic()
        if self._last_write[0] == stage and now - self._last_write[1] < PROGRESS_WRITE_S:
            return
        self._last_write = (stage, now)
        with session_scope(self.settings.database_url) as session:
            state = repository.set_progress(
                session,
                self.job_id,
                generation=self.generation,
                stage=stage,
                progress=max(0.0, min(100.0, percent)),
                detail=detail,
            )
        self._observe(state)
        self.check()

    def fault_point(self, point: str) -> None:
        """A named phase the fault suite can stop this attempt at (no-op in production)."""
        if self.fault_hold == point:
            self.fault_hold = None  # once: a released attempt runs on
            faults.hold(self.settings, self.job_id, point)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Fenced: a stale attempt's event is refused (and it learns it lost the lease)."""
        with session_scope(self.settings.database_url) as session:
            written = repository.add_attempt_event(
                session, self.job_id, self.generation, kind, message, data
            )
        if not written:
            self.lease_lost.set()
            self.check()

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.event("warning", message)

    def timed(self, name: str) -> _Timer:
        return _Timer(self, name)


class _Timer:
    """A phase's wall time, and its peak memory when the job measures memory."""

    def __init__(self, ctx: JobContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.stack = ExitStack()

    def __enter__(self) -> None:
        if self.ctx.memory is not None:
            self.stack.enter_context(self.ctx.memory.phase(self.name))
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.start
        self.ctx.timings[self.name] = round(seconds, 3)
        self.stack.close()
        memory = self.ctx.memory.phases.get(self.name) if self.ctx.memory is not None else None
        worker_metrics.phase_done(self.name, seconds, memory)
