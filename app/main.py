"""create_app(): routers, error handlers, and the reaper in the lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import api_document, health
from app.artifacts import router as artifacts_router
from app.auth.service import TenantCache
from app.config import KNOWN_DEFAULT_SECRETS, Settings, get_settings
from app.db import SessionRunner, make_status_pool, pool_sizes, set_connection_budget
from app.errors import ERRORS_413, ERRORS_429, ERRORS_503, install_error_handlers
from app.jobs import router as jobs_router
from app.jobs.reaper import reaper_thread
from app.limits.body_size import BodySizeLimit
from app.limits.rate import make_rate_limiter
from app.logging import configure_logging
from app.metrics import install_metrics
from app.reports import router as reports_router
from app.storage import make_store
from app.webhooks import router as webhooks_router
from app.webhooks.dispatcher import dispatcher_thread


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    set_connection_budget(settings.db_connections_per_process, pre_ping=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loops = [
            *([reaper_thread(settings)] if settings.reaper_enabled else []),
            *([dispatcher_thread(settings)] if settings.webhook_dispatch_enabled else []),
        ]
        for loop in loops:
            loop.start()
        # Made here, not in create_app: it belongs to the event loop that serves the app.
        app.state.pg_pool = make_status_pool(settings)
        yield
        if app.state.pg_pool is not None:
            await app.state.pg_pool.close()
        for loop in loops:
            loop.stop()

    app = FastAPI(
        title="Squash",
        version="0.1.0",
        summary="LLM compression as a service: quantization, pruning and distillation jobs.",
        lifespan=lifespan,
        # Every route: bodies over MAX_REQUEST_BYTES (middleware); authenticated ones also
        # answer 429 when the tenant's request bucket is empty (app/deps.py).
        responses={**ERRORS_413, **ERRORS_429, **ERRORS_503},
        # operationId = the handler's name (submit_job, get_job): what generated clients name
        # their functions (FastAPI's default appends path and verb).
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.store = make_store(settings)
    app.state.db = SessionRunner(
        settings.database_url, threads=min(settings.api_orm_threads, pool_sizes().orm)
    )
    app.state.tenant_cache = TenantCache(settings.auth_cache_ttl_s)
    app.state.pg_pool = None
    app.state.rate_limiter = make_rate_limiter(settings)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(health.router)
    install_metrics(app, settings)
    app.include_router(jobs_router.router)
    app.include_router(artifacts_router.router)
    app.include_router(reports_router.router)
    app.include_router(webhooks_router.router)
    api_document.install(app)
    return app


def refuse_default_secret(settings: Settings) -> None:
    """This API signs the local store's download links itself: with a published key anyone
    who can reach it could forge a link to any artifact."""
    if settings.object_store_url.startswith("file://") and (
        settings.secret_key in KNOWN_DEFAULT_SECRETS
    ):
        raise RuntimeError(
            "SECRET_KEY is a published default and this server signs download links with it "
            "(OBJECT_STORE_URL is a local store): set SECRET_KEY to a random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` (the embedded "
            "stack, `squash embedded`, makes one itself)"
        )


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_factory`."""
    settings = get_settings()
    refuse_default_secret(settings)
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    # The server process's modules and app live as long as it does: keep them out of the
    # cyclic garbage collector's full passes, which otherwise stalled the event loop 100-140 ms
    # (15-30 ms after this) every few seconds under load (bench/api_load.py). Here, not in
    # create_app: an app built inside another program (the tests' TestClient) must not pin
    # that program's objects.
    gc.collect()
    gc.freeze()
    return app
