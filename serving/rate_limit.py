"""Per-key rate limits shared by every worker that uses the same Redis: fixed windows counted in Redis, handed to
the workers in leases so a request rarely waits for Redis.

A key's limit is ``limit`` requests per ``period_s`` seconds (its own, or ``serving.rate_limit``). Redis holds one
counter per key and window, ``serving:rl:{key id}:{window}`` (serving's Redis keys: ``serving.cache.KEY_PREFIXES``). A
worker that has no tokens left for the key's current window asks Redis for a lease of ``lease_size`` tokens (one
Lua script: add, then grant what is left under the limit, atomically); further requests in that window spend the
lease with no I/O. So all workers together never admit more than ``limit`` in a window (Redis grants no more);
a worker may hold up to a lease it does not spend, so a client spread over W workers may be refused up to
``(W - 1) x lease`` requests before its limit (a lease is 1/20 of the limit, so exact for limits under 40). Once
Redis has granted the window's last token, the worker refuses the rest of that window without asking again.
A refusal carries the seconds until the window ends (``Retry-After``). Fixed windows allow a burst of up to twice
the limit across a window boundary; that is the price of one counter per window.

Why not Litestar's ``RateLimitMiddleware``: it has one limit for every client (no per-key limits), counts with
a read-then-write on its store (two workers can both read the same count), costs a store round trip on every
request, and would not see the requests the fast path answers in front of Litestar.

Redis unreachable: fail open. The request is admitted unchecked (``tessera_rate_limit_unchecked_total``), the
error counted in ``tessera_redis_errors_total``, logged once per outage, and Redis skipped for ``backoff_seconds``:
the limiter protects the service from one client's excess, and the service already answers uncached without
Redis (docs/architecture/process.md, "Failures"); refusing everyone while the cache is down would turn a cache
outage into a full one.
"""

from __future__ import annotations

import logging
import math
import time

import redis.asyncio as aioredis

from serving import metrics
from serving.cache import serving_redis
from shardctl.redis_acl import SERVING_PREFIX
from shardctl.store.api_keys import ApiKey, Rate

log = logging.getLogger(__name__)

KEY_PREFIX = f"{SERVING_PREFIX}rl:"  # under serving's prefix: its Redis user may touch nothing else
LEASE_FRACTION = 20  # a lease is limit / LEASE_FRACTION tokens (at least 1)

# KEYS[1] the window's counter; ARGV: tokens wanted, the limit, the counter's lifetime (ms). Returns the tokens
# granted: all wanted, what is left under the limit, or 0.
_LEASE_LUA = """
local want = tonumber(ARGV[1])
local n = redis.call('INCRBY', KEYS[1], want)
if n == want then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local before = n - want
local limit = tonumber(ARGV[2])
if before >= limit then return 0 end
return math.min(want, limit - before)
"""


def lease_size(rate: Rate) -> int:
    return max(1, rate.limit // LEASE_FRACTION)


class RateLimiter:
    """One worker's side of the shared limits (see the module's docstring)."""

    def __init__(
        self,
        url: str | None,
        default: Rate,
        *,
        backoff_seconds: float = 1.0,
        username: str | None = None,
        password: str | None = None,
    ):
        # Serving's Redis user (the cache's): the stack's Redis admits named users only.
        self._redis = serving_redis(url, username, password)
        self._lease = self._redis.register_script(_LEASE_LUA) if self._redis is not None else None
        self.default = default
        self._backoff = backoff_seconds
        self._skip_until = 0.0
        self._failing = False
        # key id -> [window, tokens left in it (-1: Redis refused, the window is spent), the window's end (epoch s)]
        self._tokens: dict[str, list] = {}

    def spend(self, key: ApiKey) -> bool:
        """Spend a token of the lease this worker holds for ``key``'s current window, if any (no I/O, no await:
        the common case, which the fast path asks first); False: ask ``admit``."""
        held = self._tokens.get(key.key_id)
        if held is None or held[1] <= 0 or time.time() >= held[2]:
            return False
        held[1] -= 1
        return True

    async def admit(self, key: ApiKey) -> int | None:
        """None if ``key`` may make one more request now, else the seconds until it may (``Retry-After``)."""
        if self.spend(key):
            return None
        rate = key.rate or self.default
        now = time.time()
        window = int(now // rate.period_s)
        held = self._tokens.get(key.key_id)
        if held is not None and held[0] == window and held[1] < 0:
            return self._retry_after(now, window, rate)
        granted = await self._take(key.key_id, window, rate)
        if granted is None:  # Redis unreachable: fail open
            metrics.RATE_LIMIT_UNCHECKED.inc()
            return None
        # Concurrent requests may have leased meanwhile: add to their lease rather than replace it.
        held = self._tokens.get(key.key_id)
        if held is None or held[0] != window or held[1] < 0:
            held = self._tokens[key.key_id] = [window, 0, (window + 1) * rate.period_s]
        held[1] += granted
        if held[1] > 0:
            held[1] -= 1
            return None
        held[1] = -1  # Redis granted the window's last token already: refuse the rest of it without asking
        return self._retry_after(now, window, rate)

    @staticmethod
    def _retry_after(now: float, window: int, rate: Rate) -> int:
        return max(1, math.ceil((window + 1) * rate.period_s - now))

    async def _take(self, key_id: str, window: int, rate: Rate) -> int | None:
        if self._lease is None or time.monotonic() < self._skip_until:
            return None
        try:
            granted = await self._lease(
                keys=[f"{KEY_PREFIX}{key_id}:{window}"],
                args=[lease_size(rate), rate.limit, rate.period_s * 1000 + 1000],
            )
        except (TimeoutError, aioredis.RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            self._skip_until = time.monotonic() + self._backoff
            if not self._failing:
                log.warning("rate limits unchecked: Redis did not answer (%s); admitting requests", type(exc).__name__)
            self._failing = True
            return None
        if self._failing:
            log.info("rate limits checked again: Redis answers")
        self._failing = False
        return int(granted)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
