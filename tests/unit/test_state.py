from __future__ import annotations

import pytest

from app.jobs.state import (
    LEASED,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    check,
    sources_for,
)


def test_terminal_states_have_no_exit() -> None:
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
        for target in JobState:
            with pytest.raises(IllegalTransition):
                check(state, target)


def test_every_state_has_a_rule_and_every_live_state_can_end() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in set(JobState) - TERMINAL:
        assert TRANSITIONS[state] & TERMINAL, state


def test_only_a_worker_lease_leads_to_success() -> None:
    assert sources_for(JobState.SUCCEEDED) == LEASED
    with pytest.raises(IllegalTransition):
        check(JobState.QUEUED, JobState.SUCCEEDED)


def test_cancel_paths() -> None:
    check(JobState.QUEUED, JobState.CANCELLED)
    check(JobState.RUNNING, JobState.CANCEL_REQUESTED)
    check(JobState.CANCEL_REQUESTED, JobState.CANCELLED)
    with pytest.raises(IllegalTransition):
        check(JobState.CANCEL_REQUESTED, JobState.RUNNING)
    # A lost worker's job can go back to the queue only from running, not once cancel was asked
    # (and a search from waiting, when its candidates have ended).
    assert sources_for(JobState.QUEUED) == {JobState.RUNNING, JobState.WAITING}
    # A waiting search holds no worker: cancel ends it at once; only a worker's attempt
    # (running) may put a search to waiting.
    check(JobState.WAITING, JobState.CANCELLED)
    assert sources_for(JobState.WAITING) == {JobState.RUNNING}
    with pytest.raises(IllegalTransition):
        check(JobState.WAITING, JobState.SUCCEEDED)
