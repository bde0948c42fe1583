"""The scorer's writes into serving's cache (``serving/cache.py``): each prediction it makes goes where serving
looks first, so a request for an entity whose features changed (or that was re-scored) is a hit, not a shard
read; and the scorer's marker of each feature set, which tells serving how current those entries are.

An entity's entry is written only if no entry read at or after this one's read is there (a change's marker from
serving's consumer, a later read of serving or of the scorer): the same rule as serving's own writes. ``put``
returns the entities refused so: often serving's consumer marked the very change the scorer has just scored a
few milliseconds after the scorer read it, and the scorer writes them again from a fresh read (``Scorer``). An
entity whose prediction was not written (its features changed again before the write, or are gone) gets a
version-0 entry instead, which sends the next request to its shard. The previous version's prediction key of the
same model is deleted with it, so the long TTL leaves no garbage behind a frequently changing entity.

Redis is optional here as in serving: an error is counted, logged once per outage, and returns False (the caller
then starts a new epoch); for ``backoff_seconds`` after it, Redis is not asked at all.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import NoScriptError

from serving.cache import CachedPrediction, PredictionCache, ScorerEpoch, serving_redis

log = logging.getLogger(__name__)

CACHE_WRITES = Counter("tessera_scorer_cache_writes_total", "Entities the scorer wrote into serving's cache")
CACHE_REFUSED = Counter(
    "tessera_scorer_cache_refused_total", "Entities serving's cache refused for a later entry (then written again)"
)
CACHE_ERRORS = Counter("tessera_scorer_cache_errors_total", "Failed writes of the scorer into serving's cache")

# KEYS: the entities' version keys. ARGV: read time (ms), TTL (ms), the model's prediction prefix, then per entity
# its id, its feature version (0: no prediction) and the encoded prediction.
_PUT_SCORED_LUA = """
local read_ms = tonumber(ARGV[1])
local refused = {}
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 3
  local entity, version = ARGV[at + 1], ARGV[at + 2]
  local cur = redis.call('GET', key)
  local t = cur and tonumber(string.match(cur, ':([0-9]+)$'))
  if not (t and t >= read_ms) then
    redis.call('SET', key, version .. ':' .. ARGV[1], 'PX', ARGV[2])
    local old = cur and string.match(cur, '^[0-9]+')
    if old and old ~= version and old ~= '0' then
      redis.call('DEL', ARGV[3] .. entity .. ':' .. old)
    end
    if version ~= '0' then
      redis.call('SET', ARGV[3] .. entity .. ':' .. version, ARGV[at + 3], 'PX', ARGV[2])
    end
  else
    refused[#refused + 1] = i
  end
end
return refused
"""
_encode = msgspec.msgpack.Encoder().encode


class CacheEntry(NamedTuple):
    """One entity to write: its prediction of these features, or None (the next request reads its shard)."""

    entity_id: str
    feature_version: int
    prediction: CachedPrediction | None


def scored_entry(
    entity_id: str, feature_version: int, score: float, label: str | None, event_ts: datetime, written_at: datetime
) -> CacheEntry:
    """The entry of a prediction of these features, as serving caches it."""
    prediction = CachedPrediction(score, label, feature_version, event_ts.isoformat(), written_at.isoformat())
    return CacheEntry(entity_id, feature_version, prediction)


class CacheFiller:
    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int,
        username: str | None = None,
        password: str | None = None,
        backoff_seconds: float = 1.0,
    ):
        self._redis: aioredis.Redis = serving_redis(url, username, password)  # type: ignore[assignment]
        self._ttl_ms = ttl_seconds * 1000
        self._sha = hashlib.sha1(_PUT_SCORED_LUA.encode()).hexdigest()
        self._backoff = backoff_seconds
        self._skip_until = 0.0
        self._failing = False

    def _failed(self, exc: BaseException) -> bool:
        CACHE_ERRORS.inc()
        if not self._failing:
            log.warning("serving's cache is unavailable (%s): predictions go to the table alone until it is back", exc)
        self._failing = True
        self._skip_until = time.monotonic() + self._backoff
        return False

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _recovered(self) -> None:
        if self._failing:
            log.info("serving's cache is back")
        self._failing = False

    async def put(
        self, model_key: str, feature_set: str, entries: Sequence[CacheEntry], *, read_ms: int
    ) -> list[str] | None:
        """Write ``entries`` read at ``read_ms`` (epoch ms); returns the entities refused for a later entry (None:
        Redis did not answer)."""
        if not entries:
            return []
        if not self._available():
            return None
        keys = [PredictionCache.version_key(feature_set, e.entity_id) for e in entries]
        args: list[object] = [read_ms, self._ttl_ms, PredictionCache.prediction_prefix(model_key, feature_set)]
        for e in entries:
            version = e.feature_version if e.prediction is not None else 0
            args += [e.entity_id, version, _encode(e.prediction) if e.prediction is not None else b""]
        try:
            try:
                refused = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
            except NoScriptError:  # a restarted or flushed Redis
                refused = await self._redis.eval(_PUT_SCORED_LUA, len(keys), *keys, *args)
        except (TimeoutError, aioredis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        CACHE_WRITES.inc(len(entries) - len(refused))
        CACHE_REFUSED.inc(len(refused))
        self._recovered()
        return [entries[int(i) - 1].entity_id for i in refused]

    async def epoch(self, feature_set: str) -> tuple[bool, ScorerEpoch | None]:
        """(answered, the marker of ``feature_set`` as Redis holds it: None if it has none)."""
        if not self._available():
            return False, None
        try:
            raw = await self._redis.get(PredictionCache.scorer_key(feature_set))
        except (TimeoutError, aioredis.RedisError, OSError) as exc:
            return self._failed(exc), None
        self._recovered()
        return True, ScorerEpoch.decode(raw)

    async def mark(self, feature_set: str, epoch: ScorerEpoch, keep_seconds: float) -> bool:
        """Store ``epoch`` as the marker of ``feature_set`` (kept ``keep_seconds``: a scorer that stopped leaves
        it to age, then to go)."""
        if not self._available():
            return False
        try:
            await self._redis.set(PredictionCache.scorer_key(feature_set), epoch.encode(), px=int(keep_seconds * 1000))
        except (TimeoutError, aioredis.RedisError, OSError) as exc:
            return self._failed(exc)
        self._recovered()
        return True

    async def close(self) -> None:
        await self._redis.aclose()
