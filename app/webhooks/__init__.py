"""Signed webhooks: a durable outbox of job state changes, delivered with retries."""
