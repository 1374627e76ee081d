"""Tenants and API keys. Keys are shown once at creation; only their SHA-256 is kept."""

from __future__ import annotations

import hashlib
import secrets
import uuid
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


def authenticate(session: Session, *, secret: str) -> uuid.UUID | None:
    if not secret.startswith(KEY_PREFIX):
        return None
    return repository.tenant_for_key_hash(session, hash_key(secret))


def revoke(session: Session, *, key_id: uuid.UUID) -> bool:
    return repository.revoke_key(session, key_id)
