"""Each tenant's webhook signing secret. Kept in clear (HMAC needs it), shown only to the
tenant's own API keys, replaced by rotation. Stored on the tenant (app/auth/repository.py)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy.orm import Session

from app.auth import repository

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def get_or_create_secret(session: Session, tenant_id: uuid.UUID) -> str:
    current = repository.webhook_secret(session, tenant_id)
    if current:
        return current
    # Conditional, so two processes creating it at once agree on one secret.
    repository.set_webhook_secret(session, tenant_id, new_secret(), only_if_missing=True)
    secret = repository.webhook_secret(session, tenant_id)
    assert secret is not None
    return secret


def rotate_secret(session: Session, tenant_id: uuid.UUID) -> str:
    secret = new_secret()
    repository.set_webhook_secret(session, tenant_id, secret)
    return secret
