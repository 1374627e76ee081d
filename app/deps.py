"""Request dependencies as Annotated aliases (DbDep, TenantDep, SettingsDep, StoreDep)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import repository as auth_repository
from app.auth import service as auth_service
from app.config import Settings
from app.db import SessionRunner
from app.errors import TooManyRequests, Unauthorized
from app.limits.rate import Bucket, request_bucket, submit_bucket
from app.storage import ObjectStore


# No-I/O dependencies are `async def` so FastAPI does not hop to a thread for them.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_db(request: Request) -> SessionRunner:
    db: SessionRunner = request.app.state.db
    return db


DbDep = Annotated[SessionRunner, Depends(get_db)]


async def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


# FastAPI's HTTPBearer only to declare the scheme in the OpenAPI document (securitySchemes and
# each operation's `security`, so generated clients send the key); auto_error=False because the
# answer to a missing key is our own problem+json 401.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An API key (`squash keys create`), sent as `Authorization: Bearer <key>`",
)


async def get_tenant(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> uuid.UUID:
    secret = credentials.credentials if credentials else ""
    if not secret.strip():
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant_id = await auth_service.authenticate_async(
        _key_lookup(request), request.app.state.tenant_cache, secret=secret.strip()
    )
    if tenant_id is None:
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    await _limit(request, request_bucket(settings), tenant_id, "requests")
    return tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]


def _key_lookup(request: Request) -> Callable[[str], Awaitable[uuid.UUID | None]]:
    """On the event loop's status pool (Postgres); through the ORM on a thread (SQLite)."""
    pool = request.app.state.pg_pool
    if pool is not None:
        return partial(auth_repository.tenant_for_key_hash_pg, pool)
    db: SessionRunner = request.app.state.db
    return lambda key_hash: db.run(partial(auth_repository.tenant_for_key_hash, key_hash=key_hash))


async def _limit(request: Request, bucket: Bucket, tenant_id: uuid.UUID, what: str) -> None:
    if not bucket.enabled:
        return
    decision = await request.app.state.rate_limiter.take(bucket, str(tenant_id))
    if not decision.allowed:
        raise TooManyRequests(
            f"too many {what}: at most {bucket.per_minute:g} a minute "
            f"(bursts of {bucket.capacity}); retry after {decision.retry_after_s} s",
            retry_after_s=decision.retry_after_s,
        )


async def limit_submissions(request: Request, settings: SettingsDep, tenant_id: TenantDep) -> None:
    """The stricter bucket of POST /v1/jobs (on top of the per-request one)."""
    await _limit(request, submit_bucket(settings), tenant_id, "job submissions")


SubmitLimitDep = Annotated[None, Depends(limit_submissions)]
