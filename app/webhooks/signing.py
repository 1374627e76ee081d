"""How a delivery is signed, and how a receiver checks it.

    Squash-Webhook-Id:        the delivery's id (the same on every retry: dedupe on it)
    Squash-Webhook-Timestamp: Unix seconds when this attempt was sent
    Squash-Signature:         v1=<hex HMAC-SHA256(tenant secret, "<timestamp>.<raw body>")>

The timestamp is inside the signed bytes, so a receiver that refuses timestamps older than a few
minutes refuses replays of a captured request.
"""

from __future__ import annotations

import hashlib
import hmac
import time

ID_HEADER = "Squash-Webhook-Id"
TIMESTAMP_HEADER = "Squash-Webhook-Timestamp"
SIGNATURE_HEADER = "Squash-Signature"
VERSION = "v1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{VERSION}={digest.hexdigest()}"


def verify(
    secret: str,
    *,
    timestamp: str,
    signature: str,
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True if `signature` signs `body` at `timestamp` and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)
