"""A tenant's webhook signing secret: read it, rotate it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.deps import DbDep, TenantDep
from app.errors import ERRORS_401
from app.webhooks import secrets, signing

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str
    algorithm: str = "HMAC-SHA256"
    signed_content: str = Field(
        default=f"<{signing.TIMESTAMP_HEADER}>.<raw request body>",
        description="what the signature covers",
    )
    signature_header: str = Field(
        default=signing.SIGNATURE_HEADER, description=f"'{signing.VERSION}=<hex digest>'"
    )
    timestamp_header: str = signing.TIMESTAMP_HEADER
    delivery_id_header: str = signing.ID_HEADER


@router.get("/secret", response_model=WebhookSecret, responses={**ERRORS_401})
async def get_secret(db: DbDep, tenant_id: TenantDep) -> WebhookSecret:
    secret = await db.run(lambda s: secrets.get_or_create_secret(s, tenant_id), commit=True)
    return WebhookSecret(secret=secret)


@router.post("/secret/rotate", response_model=WebhookSecret, responses={**ERRORS_401})
async def rotate_secret(db: DbDep, tenant_id: TenantDep) -> WebhookSecret:
    """A new secret signs every delivery from now on, retries of older ones included."""
    secret = await db.run(lambda s: secrets.rotate_secret(s, tenant_id), commit=True)
    return WebhookSecret(secret=secret)
