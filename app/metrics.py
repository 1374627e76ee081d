"""`GET /metrics` in Prometheus's text format (prometheus-client).

Job figures are read from the database at scrape time (one grouped query each), so every API
process reports the same numbers, whichever process Prometheus reaches: jobs by state and
pool, jobs finished in the last hour by method and outcome with their run times, and the
messages waiting in the broker per pool. Request latency is this process's own histogram
(label `route` is the route's template, never a job id). With several uvicorn processes,
Prometheus sees one process's requests per scrape; the job figures are whole either way.

Off the OpenAPI document (operators scrape it, clients do not). With `METRICS_TOKEN` set it
answers only `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.broker_inventory import waiting_messages
from app.config import Settings
from app.db import session_scope, utcnow
from app.errors import Unauthorized
from app.jobs.models import Job
from app.jobs.state import TERMINAL
from app.queue import pool_queues

RECENT = timedelta(hours=1)


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    counted = select(Job.state, Job.queue, func.count()).group_by(Job.state, Job.queue)
    rows = session.execute(counted)
    return [(str(state), str(queue), int(count)) for state, queue, count in rows]


def recent_runs(session: Session, since: Any) -> dict[tuple[str, str], tuple[int, float]]:
    """(first method, final state) -> (jobs, seconds from start to end) of jobs ended since."""
    rows = session.execute(
        select(Job.spec, Job.state, Job.started_at, Job.finished_at).where(
            Job.finished_at >= since, Job.state.in_([s.value for s in TERMINAL])
        )
    )
    runs: dict[tuple[str, str], tuple[int, float]] = {}
    for spec, state, started, finished in rows:
        spec = spec or {}
        recipe = spec.get("recipe") or [{}]
        # A job without a recipe is named by its kind: `evaluate`, or `search`.
        key = (str(recipe[0].get("method", spec.get("kind") or "evaluate")), str(state))
        seconds = (finished - started).total_seconds() if started and finished else 0.0
        count, total = runs.get(key, (0, 0.0))
        runs[key] = (count + 1, total + seconds)
    return runs


class JobsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with session_scope(self.settings.database_url) as session:
            counts = job_counts(session)
            runs = recent_runs(session, utcnow() - RECENT)
        jobs = GaugeMetricFamily("squash_jobs", "Jobs by state and pool", labels=["state", "queue"])
        for state, queue, count in counts:
            jobs.add_metric([state, queue], count)
        yield jobs
        ended = GaugeMetricFamily(
            "squash_jobs_ended_last_hour",
            "Jobs that ended in the last hour, by first method and outcome",
            labels=["method", "state"],
        )
        seconds = GaugeMetricFamily(
            "squash_job_run_seconds_last_hour",
            "Summed start-to-end seconds of those jobs (divide by the count for the mean)",
            labels=["method", "state"],
        )
        for (method, state), (count, total) in sorted(runs.items()):
            ended.add_metric([method, state], count)
            seconds.add_metric([method, state], total)
        yield ended
        yield seconds
        waiting = GaugeMetricFamily(
            "squash_queue_messages", "Messages waiting in the broker, by pool", labels=["queue"]
        )
        try:
            depths = waiting_messages(self.settings, pool_queues(self.settings))
        except Exception:  # noqa: BLE001 - a broker outage must not take the scrape down
            depths = None
        for queue, depth in (depths or {}).items():
            waiting.add_metric([queue], depth)
        yield waiting


class RequestTimer:
    """Plain ASGI (not BaseHTTPMiddleware: no extra task per request on the hot status path)."""

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The router put the matched route in the scope: its template, never an id.
            template = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(template, scope["method"], str(status[0])).observe(
                time.perf_counter() - started
            )


def install_metrics(app: FastAPI, settings: Settings) -> None:
    registry = CollectorRegistry()
    registry.register(JobsCollector(settings))
    latency = Histogram(
        "squash_http_request_duration_seconds",
        "API request latency by route template, method and status",
        ["route", "method", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )

    app.add_middleware(RequestTimer, latency=latency)

    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        token = settings.metrics_token
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise Unauthorized("the metrics need METRICS_TOKEN as a bearer token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
