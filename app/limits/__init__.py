"""Limits that protect the service from one tenant: request rates, active jobs, body sizes."""
