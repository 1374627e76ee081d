"""Each tenant's webhook signing secret. Kept in clear (HMAC needs it), shown only to the
tenant's own API keys, replaced by rotation."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth.models import Tenant

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def get_or_create_secret(session: Session, tenant_id: uuid.UUID) -> str:
    current = session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))
    if current:
        return current
    # Conditional, so two processes creating it at once agree on one secret.
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.webhook_secret.is_(None))
        .values(webhook_secret=new_secret())
    )
    secret = session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))
    assert secret is not None
    return secret


def rotate_secret(session: Session, tenant_id: uuid.UUID) -> str:
    secret = new_secret()
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(webhook_secret=secret))
    return secret
