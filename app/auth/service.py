"""Tenants and API keys. Keys are shown once at creation; only their SHA-256 is kept."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.auth import repository
from app.auth.models import ApiKey

KEY_PREFIX = "sq_"


@dataclass(frozen=True)
class IssuedKey:
    id: uuid.UUID
    tenant: str
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, tenant_name: str, name: str = "default") -> IssuedKey:
    tenant = repository.get_tenant_by_name(session, tenant_name) or repository.add_tenant(
        session, tenant_name
    )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = repository.add_key(
        session,
        ApiKey(tenant_id=tenant.id, name=name, prefix=secret[:10], key_hash=hash_key(secret)),
    )
    return IssuedKey(id=key.id, tenant=tenant_name, secret=secret)


async def authenticate_async(
    lookup: Callable[[str], Awaitable[uuid.UUID | None]], cache: TenantCache, *, secret: str
) -> uuid.UUID | None:
    """`lookup(key_hash)` reads the key's tenant from the database; cache hits (nearly every
    poll) skip it."""
    if not secret.startswith(KEY_PREFIX):
        return None
    key_hash = hash_key(secret)
    tenant_id = cache.get(key_hash)
    if tenant_id is None:
        tenant_id = await lookup(key_hash)
        if tenant_id is not None:
            cache.put(key_hash, tenant_id)
    return tenant_id


def revoke(session: Session, *, key_id: uuid.UUID) -> bool:
    return repository.revoke_key(session, key_id)


class TenantCache:
    """key hash -> tenant id for `ttl_s` seconds. Every poll of a job status would otherwise
    pay a database round trip for the key; the price is that a revoked key keeps working in an
    API process for at most `ttl_s` (AUTH_CACHE_TTL_S). Unknown keys are never cached."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[uuid.UUID, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> uuid.UUID | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, tenant_id: uuid.UUID) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (tenant_id, time.monotonic() + self.ttl_s)
