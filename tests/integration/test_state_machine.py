"""Hypothesis drives random sequences of claims, heartbeats and state moves — legal and
illegal, with current and stale fencing tokens — against one job row in the real Postgres, and
checks the database against a model of `app/jobs/state.py` after every step."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from app.auth import repository as auth_repository
from app.auth import service as auth_service
from app.db import session_scope
from app.jobs import repository
from app.jobs.models import Job, JobEvent
from app.jobs.state import TERMINAL, TRANSITIONS, IllegalTransition, JobState

MAX_ATTEMPTS = 3


def test_job_state_machine_refuses_every_illegal_or_stale_move(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant_name = f"hypothesis-{uuid.uuid4().hex[:8]}"
        auth_service.create_key(session, tenant_name=tenant_name)
        tenant = auth_repository.get_tenant_by_name(session, tenant_name)
        assert tenant is not None
        tenant_id = tenant.id
    tally = {
        "illegal_attempted": 0,
        "illegal_accepted": 0,
        "stale_attempted": 0,
        "stale_accepted": 0,
    }

    class JobMachine(RuleBasedStateMachine):
        @initialize()
        def new_job(self) -> None:
            self.state = JobState.QUEUED
            self.generation = 0
            self.attempts = 0
            self.moves = 1  # "job accepted"
            with session_scope(database_url) as session:
                job = Job(
                    tenant_id=tenant_id,
                    state=JobState.QUEUED.value,
                    device="gpu",
                    queue="gpu",
                    spec={},
                    request_hash="x",
                    max_attempts=MAX_ATTEMPTS,
                )
                repository.insert_job(session, job, {})
                self.job_id = job.id

        @rule()
        def claim(self) -> None:
            with session_scope(database_url) as session:
                got = repository.claim(session, self.job_id, worker_id="w", lease_ttl_s=60)
            legal = self.state == JobState.QUEUED and self.attempts < MAX_ATTEMPTS
            assert (got is not None) == legal
            if got is not None:
                assert got == self.generation + 1  # every claim bumps the fencing token
                self.generation, self.attempts = got, self.attempts + 1
                self.state, self.moves = JobState.RUNNING, self.moves + 1

        @rule(
            to=st.sampled_from(list(JobState)),
            fence=st.sampled_from(["current", "stale", "none"]),
        )
        def move(self, to: JobState, fence: str) -> None:
            generation = {"current": self.generation, "stale": self.generation - 1, "none": None}[
                fence
            ]
            with session_scope(database_url) as session:
                applied = repository.transition(session, self.job_id, to, generation=generation)
            legal = to in TRANSITIONS[self.state]
            fresh = fence != "stale"
            if not legal:
                tally["illegal_attempted"] += 1
                tally["illegal_accepted"] += applied
            elif not fresh:
                tally["stale_attempted"] += 1
                tally["stale_accepted"] += applied
            assert applied == (legal and fresh), (self.state, to, fence)
            if applied:
                self.state, self.moves = to, self.moves + 1

        @rule(source=st.sampled_from(list(JobState)), to=st.sampled_from(list(JobState)))
        def explicit_sources(self, source: JobState, to: JobState) -> None:
            # Asking for a move the table forbids is a programming error, refused before SQL.
            if to in TRANSITIONS[source]:
                return
            tally["illegal_attempted"] += 1
            with session_scope(database_url) as session:
                try:
                    repository.transition(session, self.job_id, to, sources=[source])
                    tally["illegal_accepted"] += 1
                except IllegalTransition:
                    pass

        @rule(fence=st.sampled_from(["current", "stale"]))
        def heartbeat(self, fence: str) -> None:
            generation = self.generation if fence == "current" else self.generation - 1
            with session_scope(database_url) as session:
                seen = repository.heartbeat(
                    session, self.job_id, generation=generation, lease_ttl_s=60
                )
            leased = self.state in (JobState.RUNNING, JobState.CANCEL_REQUESTED)
            assert seen == (self.state.value if leased and fence == "current" else None)

        @invariant()
        def database_agrees_with_the_model(self) -> None:
            with session_scope(database_url) as session:
                job = session.get(Job, self.job_id)
                assert job is not None
                assert (job.state, job.lease_generation, job.attempts) == (
                    self.state.value,
                    self.generation,
                    self.attempts,
                )
                if self.state in TERMINAL:
                    assert job.finished_at is not None
                events = session.scalar(
                    select(func.count()).where(
                        JobEvent.job_id == self.job_id, JobEvent.kind == "state"
                    )
                )
                assert events == self.moves

    run_state_machine_as_test(
        JobMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print(f"state machine: {tally}")  # noqa: T201 - the figures the README quotes
    assert tally["illegal_attempted"] > 0 and tally["stale_attempted"] > 0
    assert tally["illegal_accepted"] == 0 and tally["stale_accepted"] == 0
