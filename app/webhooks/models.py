from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, new_id, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY (job_events.id is one there).
EventId = BigInteger().with_variant(Integer(), "sqlite")


class WebhookDelivery(Base):
    """The outbox: one row per state change of a job that named a `webhook_url`, written in
    the transaction that changed the state, so a committed state change always has its
    delivery and a rolled-back one never does. `event_id` is unique: one delivery per change."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[int] = mapped_column(
        EventId, ForeignKey("job_events.id", ondelete="CASCADE"), unique=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    # pending -> delivered (a 2xx) | expired (webhook_max_age_s passed without one)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
