"""Imports every ORM model so Base.metadata is complete (Alembic and tests use this)."""

from app.artifacts.models import Artifact
from app.auth.models import ApiKey, Tenant
from app.db import Base
from app.jobs.models import Job, JobEvent, JobLabel
from app.webhooks.models import WebhookDelivery

__all__ = ["ApiKey", "Artifact", "Base", "Job", "JobEvent", "JobLabel", "Tenant", "WebhookDelivery"]
