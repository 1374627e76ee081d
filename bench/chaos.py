"""Chaos run (issue 21): a seeded schedule of faults against the whole stack, then a checker.

    .venv/bin/python -m bench.chaos [--seed 21] [--workers 3]

The stack (bench/chaos_stack.py): private Postgres and Redis, S3 over HTTP (moto), the API as
a uvicorn process, Celery worker processes; tiny random Llama models, real jobs. The faults, in
a seeded order with seeded details (kill style, outage lengths, how many jobs run beside):

- SIGKILL in every phase (message taken but job not yet claimed, model load, compression, a
  layer-wise GPTQ stage past half its layers, upload after the first file, after the upload
  before the final commit), of the whole worker or of only the job's process;
- SIGSTOP of a worker holding a job until another worker finished it, then SIGCONT;
- Redis FLUSHALL and Redis kill -9 (down 10 to 20 s) with every worker busy and a backlog queued;
- API kill -9 while POSTs are in flight (clients retry with their Idempotency-Key);
- Postgres stopped 5 to 10 s with jobs running and queued;
- cancels of queued jobs, of jobs stuck inside a call in each phase, of jobs at their check
  points (evaluation) and of jobs whose worker was SIGKILLed first, each timed.

Faults land in the phase named through the worker's fault points (workers/faults.py), not by
timing. Then every job must end, and bench/chaos_check.py counts what must be zero.
Results: printed, and written to bench/results/chaos.json (exit 1 if a target broke).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.broker_inventory import jobs_with_messages
from app.queue import pool_queues
from bench.chaos_check import check, self_test
from bench.chaos_stack import ChaosStack, chaos_stack
from bench.common import RESULTS_DIR, write_results
from tests.support.jobs import TERMINAL
from tests.support.services import wait_until
from tests.support.stack import fast_job, gptq_job, percentile, slow_body
from workers.faults import BEFORE_CLAIM, POINTS, marker_path
from workers.methods.shared.layer_resume import PAST_HALF

KILL_POINTS = (BEFORE_CLAIM, *POINTS, PAST_HALF)
CANCEL_POINTS = POINTS  # a job stuck inside one call in each phase: no check point runs


@dataclass
class Chaos:
    stack: ChaosStack
    rng: random.Random
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> job id
    disturbed: set[str] = field(default_factory=set)  # attempts cut on purpose
    during_broker_outage: set[str] = field(default_factory=set)  # running through one
    during_postgres_outage: set[str] = field(default_factory=set)
    cancel_latency: dict[str, list[float]] = field(default_factory=dict)  # as the client saw
    recorded_latency: dict[str, list[float]] = field(default_factory=dict)  # in the job's events
    # In Redis (queued, not running) at a FLUSHALL / kill -9, or taken by a worker killed whole
    # before its claim.
    messages_lost_to_faults: int = 0
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.started:7.1f}s  {what}"
        self.log.append(line)
        print(line, flush=True)

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> str:
        key = f"chaos-{len(self.accepted):03d}-{self.rng.getrandbits(32):08x}"
        self.accepted[key] = ""  # reserved before the call: concurrent submits get other keys
        self.accepted[key] = job_id = self.stack.submit(body, key)
        return job_id

    def background(self, low: int = 0, high: int = 2) -> None:
        """Plain jobs beside the fault, so queues and workers are never idle."""
        for _ in range(self.rng.randint(low, high)):
            self.submit(fast_job())

    def hold(self, point: str) -> tuple[str, int]:
        """A job stopped at `point` on its first attempt; returns it and its process's pid."""
        job_id = self.submit(gptq_job(point) if point == PAST_HALF else fast_job(point))
        marker = marker_path(self.stack.settings, job_id)

        def held() -> dict[str, Any] | None:
            try:
                return dict(json.loads(marker.read_text()))
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        found = wait_until(held, timeout=300, interval=0.05, what=f"a job held at {point}")
        return job_id, int(found["pid"])

    def release(self, job_id: str) -> None:
        marker_path(self.stack.settings, job_id).unlink(missing_ok=True)

    def running(self) -> set[str]:
        return {
            job_id
            for job_id in self.accepted.values()
            if job_id and self.stack.job(job_id)["state"] in ("running", "cancel_requested")
        }

    def timed_cancel(self, job_id: str, phase: str) -> None:
        started = time.monotonic()
        response = self.stack.request("POST", f"/v1/jobs/{job_id}/cancel")
        assert response.status_code in (200, 202), response.text
        self.stack.wait_job(job_id, {"cancelled"}, timeout=60)
        self.cancel_latency.setdefault(phase, []).append(time.monotonic() - started)
        self.recorded_latency.setdefault(phase, []).append(self.recorded_cancel_s(job_id))

    def recorded_cancel_s(self, job_id: str) -> float:
        """Seconds between the cancel's and the end's events, as the job's history holds them
        (no client round trips or polling in it)."""
        events = self.stack.request("GET", f"/v1/jobs/{job_id}/events").json()["items"]
        at = {e["state"]: e["created_at"] for e in events if e["kind"] == "state"}
        start = datetime.fromisoformat(at.get("cancel_requested", at["cancelled"]))
        return (datetime.fromisoformat(at["cancelled"]) - start).total_seconds()

    # -- faults -----------------------------------------------------------------------------
    def kill_in_phase(self, point: str) -> None:
        job_id, pid = self.hold(point)
        whole = self.rng.random() < 0.5
        if whole:
            self.stack.worker_of(pid).kill()
            self.stack.start_worker()
        else:
            os.kill(pid, signal.SIGKILL)  # the job's process only: Celery forks a new one
        if point != BEFORE_CLAIM:  # no attempt had begun: the job runs on its first one
            self.disturbed.add(job_id)
        elif whole:  # stranded in the dead consumer's unacked set until the reaper sees it
            self.messages_lost_to_faults += 1
        self.release(job_id)
        self.note(f"SIGKILL {'worker' if whole else 'job process'} at {point}: {job_id}")
        self.background()

    def stop_past_lease(self) -> None:
        point = self.rng.choice(("compression", "upload", "before_commit"))
        job_id, pid = self.hold(point)
        group = self.stack.worker_of(pid).proc.pid
        os.killpg(group, signal.SIGSTOP)
        self.disturbed.add(job_id)
        self.note(f"SIGSTOP worker at {point}: {job_id}")
        self.stack.wait_job(job_id, TERMINAL, timeout=300)  # another worker ran it
        os.killpg(group, signal.SIGCONT)
        self.release(job_id)
        self.note(f"SIGCONT after the job ended elsewhere: {job_id}")

    def busy_workers(self) -> list[str]:
        """Every live worker held at compression: what comes next waits in the queue."""
        alive = [w for w in self.stack.workers if w.proc.poll() is None]
        return [self.hold("compression")[0] for _ in alive]

    def queued_backlog(self, count: int) -> list[str]:
        jobs = [self.submit(fast_job()) for _ in range(count)]
        for job_id in self.rng.sample(jobs, 1):
            self.timed_cancel(job_id, "queued")
        return jobs

    def count_lost_messages(self, held: list[str]) -> int:
        settings = self.stack.settings
        present = jobs_with_messages(settings, pool_queues(settings), fresh_s=0.0) or set()
        return len({str(j) for j in present} - set(held))

    def redis_flushall(self) -> None:
        held = self.busy_workers()
        self.during_broker_outage |= set(held)
        self.queued_backlog(self.rng.randint(4, 6))
        lost = self.count_lost_messages(held)
        self.stack.redis.client().flushall()
        self.messages_lost_to_faults += lost
        self.note(f"Redis FLUSHALL: {lost} queued messages gone, {len(held)} jobs running")
        for job_id in held:
            self.release(job_id)

    def redis_kill(self) -> None:
        held = self.busy_workers()
        self.during_broker_outage |= set(held)
        self.queued_backlog(self.rng.randint(3, 5))
        lost = self.count_lost_messages(held)
        outage = self.rng.uniform(10, 20)
        self.stack.redis.stop()  # kill -9 of a redis-server without persistence
        self.messages_lost_to_faults += lost
        self.note(f"Redis kill -9 for {outage:.1f}s: {lost} queued messages gone")
        down_at = time.monotonic()
        for _ in range(2):  # accepted while the broker is down: stored, sent later
            self.submit(fast_job())
        for job_id in held:  # they finish during the outage
            self.release(job_id)
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        self.stack.redis.start()
        self.note("Redis back")

    def api_kill(self) -> None:
        count = self.rng.randint(8, 12)
        delay = self.rng.uniform(0.05, 0.5)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(self.submit, fast_job()) for _ in range(count)]
            time.sleep(delay)
            self.stack.api.kill()
            self.note(f"API kill -9 {delay:.2f}s into {count} POSTs")
            time.sleep(1.0)
            self.stack.api.start()
            self.note("API back")
            for future in futures:
                future.result()

    def postgres_restart(self) -> None:
        held = [self.hold("compression")[0] for _ in range(2)]
        self.during_postgres_outage |= set(held) | self.running()
        for _ in range(self.rng.randint(2, 4)):
            self.submit(fast_job())
        outage = self.rng.uniform(5, 10)
        self.stack.postgres.stop()
        self.note(f"Postgres stopped for {outage:.1f}s")
        time.sleep(outage)
        self.stack.postgres.start()
        self.note("Postgres back")
        for job_id in held:
            self.release(job_id)

    def cancel_inside_a_call(self, point: str) -> None:
        job_id, _ = self.hold(point)
        self.timed_cancel(job_id, f"inside a call: {point}")
        self.release(job_id)
        self.note(f"cancelled inside a call at {point}: {job_id}")

    def cancel_at_check_points(self) -> None:
        job_id = self.submit(slow_body())
        wait_until(
            lambda: self.stack.job(job_id)["stage"] == "evaluate_original",
            timeout=300,
            interval=0.05,
            what="the evaluation to start",
        )
        self.timed_cancel(job_id, "evaluating (check points)")
        self.note(f"cancelled while evaluating: {job_id}")

    def cancel_with_worker_dead(self) -> None:
        job_id, pid = self.hold("compression")
        self.stack.worker_of(pid).kill()
        self.disturbed.add(job_id)
        self.timed_cancel(job_id, "worker dead")
        self.stack.start_worker()
        self.release(job_id)
        self.note(f"cancelled with its worker dead: {job_id}")

    def schedule(self) -> list[tuple[str, Any]]:
        steps: list[tuple[str, Any]] = [
            (f"kill at {p}", lambda p=p: self.kill_in_phase(p)) for p in KILL_POINTS * 2
        ]
        steps += [("SIGSTOP past the lease", self.stop_past_lease)]
        steps += [("Redis FLUSHALL", self.redis_flushall), ("Redis kill -9", self.redis_kill)]
        steps += [("API kill -9", self.api_kill), ("Postgres restart", self.postgres_restart)]
        for _ in range(2):
            steps += [
                (f"cancel at {p}", lambda p=p: self.cancel_inside_a_call(p)) for p in CANCEL_POINTS
            ]
            steps += [("cancel evaluating", self.cancel_at_check_points)]
            steps += [("cancel, worker dead", self.cancel_with_worker_dead)]
        self.rng.shuffle(steps)
        return steps


def reaper_counts(stack: ChaosStack) -> dict[str, int]:
    """The API's reaper rounds (JSON log lines), summed over every API process of the run."""
    totals: dict[str, int] = {}
    for line in stack.api.log_path.read_text(errors="replace").splitlines():
        if '"reaper.round"' not in line:
            continue
        for key, value in json.loads(line).items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    return totals


def consumed_deliveries(stack: ChaosStack) -> int:
    """Deliveries that ended without running their job because the database was down (the
    task raised before its claim committed): those messages are gone too."""
    pattern = re.compile(r"raised unexpected: OperationalError")
    return sum(len(pattern.findall(w.log_path.read_text(errors="replace"))) for w in stack.workers)


def latency_table(chaos: Chaos, bounds: dict[str, float]) -> dict[str, dict[str, float]]:
    return {
        phase: {
            "n": len(values),
            "p50_s": round(statistics.median(values), 2),
            "p99_s": round(percentile(values, 99), 2),
            "recorded_p99_s": round(percentile(chaos.recorded_latency[phase], 99), 2),
            "bound_s": bounds[phase],
        }
        for phase, values in sorted(chaos.cancel_latency.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with chaos_stack(args.workers) as stack:
        chaos = Chaos(stack, random.Random(args.seed))
        for _ in range(3):
            chaos.submit(fast_job())
        for name, step in chaos.schedule():
            chaos.note(f"-- {name}")
            step()
        chaos.note("-- drain: every job must end")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = {stack.job(j)["state"] for j in chaos.accepted.values()}
            if states <= TERMINAL:
                break
            time.sleep(0.5)
        time.sleep(2 * stack.settings.reaper_interval_s + 1)  # a last reaper round's cleanup
        figures = check(stack, chaos.accepted)
        result = summarize(chaos, stack, figures, args)
        result["checker_self_test_passed"] = self_test(stack, chaos.accepted, result)
    print(json.dumps({k: v for k, v in result.items() if k != "schedule"}, indent=2))
    write_results(RESULTS_DIR / "chaos.json", result, targets(result))


def summarize(
    chaos: Chaos, stack: ChaosStack, figures: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    settings = stack.settings
    attempts = figures.pop("attempts")
    reaper = reaper_counts(stack)
    in_call = settings.heartbeat_interval_s + settings.cancel_grace_s
    bounds = {
        "queued": 1.0,
        "evaluating (check points)": in_call,
        "worker dead": settings.lease_ttl_s + settings.reaper_interval_s,
        **{f"inside a call: {p}": in_call for p in CANCEL_POINTS},
    }
    broker = chaos.during_broker_outage - chaos.disturbed
    postgres = chaos.during_postgres_outage - chaos.disturbed
    return {
        "seed": args.seed,
        "workers": args.workers,
        "wall_s": round(time.monotonic() - chaos.started, 1),
        **figures,
        "attempts_consumed_by_broker_outage": sum(attempts[j] - 1 for j in broker),
        "attempts_consumed_by_postgres_outage": sum(attempts[j] - 1 for j in postgres),
        "extra_attempts_of_undisturbed_jobs": sum(
            a - 1 for j, a in attempts.items() if j not in chaos.disturbed and a > 1
        ),
        "resends": reaper.get("resent", 0),
        "sent_late": reaper.get("sent_late", 0),
        "messages_really_lost": chaos.messages_lost_to_faults + consumed_deliveries(stack),
        "reaper": reaper,
        "server_errors": len(stack.server_errors),
        "answers_503": stack.unavailable,
        "cancel_latency": latency_table(chaos, bounds),
        "settings": {
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "lease_ttl_s": settings.lease_ttl_s,
            "reaper_interval_s": settings.reaper_interval_s,
            "cancel_grace_s": settings.cancel_grace_s,
            "requeue_after_s": settings.requeue_after_s,
        },
        "schedule": chaos.log,
    }


def targets(result: dict[str, Any]) -> list[str]:
    failures = [
        f"{name} = {result[name]} (target 0)"
        for name in (
            "lost",
            "duplicated",
            "stuck",
            "orphan_objects",
            "manifest_mismatches",
            "attempts_consumed_by_broker_outage",
            "scratch_bytes_left",
            "server_errors",
        )
        if result[name]
    ]
    if not result["checker_self_test_passed"]:
        failures.append("the checker missed a planted orphan or a changed file")
    if result["jobs"] < 40:
        failures.append(f"jobs = {result['jobs']} (target >= 40)")
    if result["resends"] > result["messages_really_lost"]:
        failures.append(
            f"resends {result['resends']} > messages really lost {result['messages_really_lost']}"
        )
    for phase, row in result["cancel_latency"].items():
        if row["p99_s"] > row["bound_s"]:
            failures.append(f"cancel p99 {phase}: {row['p99_s']} s > bound {row['bound_s']} s")
    return failures


if __name__ == "__main__":
    main()
