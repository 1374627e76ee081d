"""The heartbeat ends a job stuck in one call CANCEL_GRACE_S after the cancel, however long its
own beats take, so the stated bound (HEARTBEAT_INTERVAL_S + CANCEL_GRACE_S) holds with the
interval left for the commit (the chaos run measured 3.62 s against 3.5 s when the grace was
counted in beats from when the flag was seen). The database is replaced by a slow
beat here: only the deadline arithmetic is under test."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from app.config import Settings
from app.jobs.state import JobState
from workers.context import JobContext
from workers.errors import JobCancelled

INTERVAL_S, GRACE_S, BEAT_WRITE_S = 0.1, 0.4, 0.03


def stuck_job(
    state: dict[str, str],
    ended: threading.Event,
    beats: list[tuple[float, str]] | None = None,
    ended_at: list[float] | None = None,
) -> JobContext:
    """A job inside one long call; `beats` collects each beat's start and the state it read,
    `ended_at` when the heartbeat ended the attempt."""
    settings = Settings(heartbeat_interval_s=INTERVAL_S, cancel_grace_s=GRACE_S)
    ctx = JobContext(uuid.uuid4(), 1, settings)

    def slow_beat() -> None:  # a loaded database: every beat's write takes a while
        began = time.monotonic()
        time.sleep(BEAT_WRITE_S)
        read = state["now"]
        if beats is not None:
            beats.append((began, read))
        ctx._observe(read)

    def end() -> None:
        if ended_at is not None:
            ended_at.append(time.monotonic())
        ended.set()

    ctx.beat_once = slow_beat  # type: ignore[method-assign]
    ctx.on_unacknowledged_cancel = end
    return ctx


def test_a_stuck_job_ends_the_grace_after_the_cancel() -> None:
    latencies = []
    for offset in (0.0, 0.03, 0.06, 0.09):  # the cancel lands anywhere between two beats
        state, ended = {"now": JobState.RUNNING.value}, threading.Event()
        beats: list[tuple[float, str]] = []
        ended_at: list[float] = []
        ctx = stuck_job(state, ended, beats, ended_at)
        ctx.start()
        time.sleep(0.35 + offset)
        cancelled_at = time.monotonic()
        state["now"] = JobState.CANCEL_REQUESTED.value
        assert ended.wait(5)
        latencies.append(ended_at[0] - cancelled_at)
        ctx.stop()
        # The deadline counts from the start of the last beat that read no cancel (not an older
        # one, not the one that saw it): never early, whatever the threads' scheduling. (A test
        # of the gap between that read and the cancel would time this machine's load, not the
        # code: a starved heartbeat thread leaves the job less of the grace, by design.)
        last_clear = max(began for began, read in beats if read == JobState.RUNNING.value)
        assert last_clear < cancelled_at
        assert abs(ctx._clear_read_at - last_clear) < 0.05, (ctx._clear_read_at, last_clear)
        assert ended_at[0] >= ctx._clear_read_at + GRACE_S
    # The stated bound: at most the grace after the cancel.
    assert max(latencies) <= GRACE_S + 0.05, latencies


def test_a_job_that_reaches_a_check_point_is_left_to_end_itself() -> None:
    state, ended = {"now": JobState.CANCEL_REQUESTED.value}, threading.Event()
    ctx = stuck_job(state, ended)
    ctx.start()
    assert ctx.cancel_requested.wait(5)
    with pytest.raises(JobCancelled):  # the job's own thread acts on the cancel
        ctx.check()
    assert ctx.cancel_acknowledged.is_set()
    assert not ended.wait(INTERVAL_S + GRACE_S + 0.3)
    ctx.stop()
