"""Per-tenant token buckets: `capacity` requests at once, refilled at `per_minute`.

In Redis (one Lua script: atomic, on Redis's clock) so every API process shares a tenant's
bucket; in process when there is no Redis (embedded mode). A process takes tokens from Redis
in small batches (capacity / 20, at most 1 second's refill) and spends them locally for up to
5 seconds: a Redis round trip per request cost ~30 % of the status endpoint's throughput, and
a client polling once a second would otherwise ask Redis on nearly every request. The price is
that a tenant may be refused up to one batch per process early; it is never admitted past its
limit (every token spent was taken from its bucket). If Redis is unreachable the limiter lets
requests through: rate limiting is protection, not a reason to refuse a status poll.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import Settings

log = structlog.get_logger()

# KEYS[1] bucket; ARGV: refill per second, capacity, tokens wanted. Takes as many as there are
# (up to wanted). Returns {tokens taken, seconds until one more}.
TOKEN_BUCKET_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local taken = math.min(tonumber(ARGV[3]), math.floor(tokens))
tokens = tokens - taken
local wait = 0
if taken == 0 then
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {taken, tostring(wait)}
"""


@dataclass(frozen=True)
class Bucket:
    name: str
    per_minute: float
    capacity: int

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0


class RateLimiter(Protocol):
    async def take(self, bucket: Bucket, tenant: str) -> Decision: ...


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


LOCAL_TOKEN_LIFETIME_S = 5.0


class RedisRateLimiter:
    def __init__(self, url: str, prefix: str) -> None:
        self.redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.script = self.redis.register_script(TOKEN_BUCKET_LUA)
        self.prefix = prefix
        # (bucket, tenant) -> (tokens taken from Redis not yet spent, when they lapse)
        self.held: dict[str, tuple[int, float]] = {}

    @staticmethod
    def batch(bucket: Bucket) -> int:
        return max(1, min(bucket.capacity // 20, int(bucket.per_minute / 60)))

    async def take(self, bucket: Bucket, tenant: str) -> Decision:
        key = f"{self.prefix}ratelimit:{bucket.name}:{tenant}"
        held, lapses = self.held.get(key, (0, 0.0))
        now = time.monotonic()
        if held > 0 and now < lapses:
            self.held[key] = (held - 1, lapses)
            return Decision(True)
        try:
            taken, wait = await self.script(
                keys=[key], args=[bucket.per_minute / 60, bucket.capacity, self.batch(bucket)]
            )
        except (RedisError, OSError) as error:
            log.warning("ratelimit.redis_unavailable", error=str(error))
            return Decision(True)
        if int(taken) == 0:
            return Decision(False, _retry_after(float(wait)))
        self.held[key] = (int(taken) - 1, now + LOCAL_TOKEN_LIFETIME_S)
        if len(self.held) > 100_000:  # many tenants: forget lapsed entries
            self.held = {k: v for k, v in self.held.items() if v[1] > now}
        return Decision(True)


class LocalRateLimiter:
    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    async def take(self, bucket: Bucket, tenant: str) -> Decision:
        rate, key, now = bucket.per_minute / 60, f"{bucket.name}:{tenant}", time.monotonic()
        with self.lock:
            tokens, at = self.buckets.get(key, (float(bucket.capacity), now))
            tokens = min(bucket.capacity, tokens + (now - at) * rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return Decision(True)
            self.buckets[key] = (tokens, now)
            return Decision(False, _retry_after((1 - tokens) / rate))


def make_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisRateLimiter(settings.broker_url, settings.broker_key_prefix)
    return LocalRateLimiter()


def request_bucket(settings: Settings) -> Bucket:
    return Bucket("requests", settings.rate_limit_per_minute, settings.rate_limit_burst)


def submit_bucket(settings: Settings) -> Bucket:
    return Bucket(
        "submits", settings.submit_rate_limit_per_minute, settings.submit_rate_limit_burst
    )
