"""create_app(): routers, error handlers, and the reaper in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import health
from app.artifacts import router as artifacts_router
from app.auth.service import TenantCache
from app.config import Settings, get_settings
from app.db import open_status_pool
from app.errors import install_error_handlers
from app.jobs import router as jobs_router
from app.jobs.reaper import ReaperThread
from app.logging import configure_logging
from app.storage import make_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = ReaperThread(settings) if settings.reaper_enabled else None
        if reaper:
            reaper.start()
        app.state.pg_pool = await open_status_pool(settings)
        yield
        if app.state.pg_pool is not None:
            await app.state.pg_pool.close()
        if reaper:
            reaper.stop()

    app = FastAPI(
        title="Squash",
        version="0.1.0",
        summary="LLM compression as a service: quantization, pruning and distillation jobs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = make_store(settings)
    app.state.tenant_cache = TenantCache(settings.auth_cache_ttl_s)
    app.state.pg_pool = None
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs_router.router)
    app.include_router(artifacts_router.router)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_factory`."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
