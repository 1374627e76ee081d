from __future__ import annotations

import uuid
from typing import Any, cast

from psycopg.rows import scalar_row
from sqlalchemy import CursorResult, Select, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.orm import Session

from app.auth.models import ApiKey, Tenant
from app.db import utcnow
from app.status_pool import StatusPool


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def add_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def add_key(session: Session, key: ApiKey) -> ApiKey:
    session.add(key)
    session.flush()
    return key


def tenant_for_key_hash_query(key_hash: str) -> Select[uuid.UUID]:
    return select(ApiKey.tenant_id).where(
        ApiKey.key_hash == bindparam("key_hash", key_hash), ApiKey.revoked_at.is_(None)
    )


def tenant_for_key_hash(session: Session, key_hash: str) -> uuid.UUID | None:
    return session.scalar(tenant_for_key_hash_query(key_hash))


# The same query as SQL for psycopg (`%(key_hash)s`), compiled once: an API-key lookup runs on
# the event loop's status pool (every key misses the cache once per AUTH_CACHE_TTL_S).
TENANT_FOR_KEY_HASH_SQL = str(
    tenant_for_key_hash_query("").compile(dialect=pg_psycopg.dialect())  # type: ignore[no-untyped-call]
)


async def tenant_for_key_hash_pg(pool: StatusPool, key_hash: str) -> uuid.UUID | None:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=scalar_row)
        await cursor.execute(TENANT_FOR_KEY_HASH_SQL, {"key_hash": key_hash}, prepare=True)
        return await cursor.fetchone()


def revoke_key(session: Session, key_id: uuid.UUID) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return cast(CursorResult[Any], result).rowcount == 1


def count_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(
        select(ApiKey, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at)
    )
    return [(key, name) for key, name in rows]


def webhook_secret(session: Session, tenant_id: uuid.UUID) -> str | None:
    return session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))


def set_webhook_secret(
    session: Session, tenant_id: uuid.UUID, secret: str, *, only_if_missing: bool = False
) -> None:
    """Store the tenant's webhook secret; `only_if_missing` keeps one a concurrent request
    stored first (the caller reads it back)."""
    query = update(Tenant).where(Tenant.id == tenant_id)
    if only_if_missing:
        query = query.where(Tenant.webhook_secret.is_(None))
    session.execute(query.values(webhook_secret=secret))
