"""Redis look-aside cache of predictions, and single-flight so concurrent misses compute once.

Three kinds of keys, all under serving's prefix (``serving:``, ``shardctl.redis_acl.SERVING_PREFIX``: serving's
Redis user may touch nothing else):

- ``fv:{feature_set}:{entity}`` -> ``{feature version}:{read at, epoch ms}``, the entity's feature version and
  when it was read from its shard. How long it is trusted is ``serving/freshness.py``'s rule: while the change
  stream is live, for the whole ``cache_ttl_seconds`` (the change consumer deletes the key when the entity's
  features change); while the scorer's epoch covers it (below), for as long as the scorer keeps up; otherwise
  for ``feature_version_ttl_seconds`` since the read (the staleness bound). Then the shard is read again and a
  new version gives a new prediction key.
- ``pred:{model}:{feature_set}:{entity}:{feature version}`` -> the prediction, kept ``cache_ttl_seconds``.
  A promotion changes ``model`` (effective as soon as the worker swapped, within about a second of the
  NOTIFY), so a new model never answers from an old model's entries.
- ``scorer:{feature_set}`` -> ``{epoch start, ms}:{caught up at, ms}``, written by the precomputing scorer
  (``serving/scorer/``) after each round: every change of the feature set committed before "caught up at" is
  reflected in the ``fv`` entries (the scorer wrote the new version's entry, or a marker that sends the next
  request to the shard), continuously since "epoch start". An entry read after the epoch start is therefore as
  current as the scorer is: the scorer fills the cache as features change, and a miss becomes a hit.

Writes go behind the answer: queued, they ride in the next lookup's pipeline (or leave alone within
``WRITE_BEHIND_S``), so under load a batch of misses costs one Redis round trip, not three (lookup, SCRIPT
EXISTS, write).

Redis is optional at run time: any Redis error counts in ``tessera_redis_errors_total``, the request is
answered uncached, and Redis is skipped for ``backoff_seconds`` so a dead server costs no timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from serving import metrics
from shardctl.redis_acl import SERVING_PREFIX


class CachedPrediction(msgspec.Struct, array_like=True, gc=False):
    score: float
    label: str | None
    feature_version: int
    event_ts: str
    written_at: str


_decode = msgspec.msgpack.Decoder(CachedPrediction).decode


class CacheLookup(NamedTuple):
    """What Redis knows of one entity: the feature version (None: unknown), when it was read from its shard
    (epoch ms), for how many more ms Redis keeps it, the prediction computed for it (None: none yet), and, when
    the scorer's current epoch covers the entry, when the scorer last caught up (epoch ms; 0: not covered)."""

    feature_version: int | None
    read_ms: int
    ttl_ms: int
    prediction: CachedPrediction | None
    scorer_caught_up_ms: int = 0


class ScorerEpoch(NamedTuple):
    """The scorer's marker for a feature set: since ``started_ms`` it has reflected every change in the cache,
    up to the changes committed before ``caught_up_ms``."""

    started_ms: int
    caught_up_ms: int

    def encode(self) -> str:
        return f"{self.started_ms}:{self.caught_up_ms}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> ScorerEpoch | None:
        if not raw:
            return None
        started, _, caught_up = (raw.decode() if isinstance(raw, bytes) else raw).partition(":")
        try:
            return cls(int(started), int(caught_up))
        except ValueError:
            return None


NOT_CACHED = CacheLookup(None, 0, 0, None)
# Every key serving writes in Redis starts with one of these, all under serving's prefix (the stack's Redis ACL
# lets serving's user touch nothing else): feature versions, predictions, and the per-key rate limit windows
# (``serving/rate_limit.py``).
KEY_PREFIXES = tuple(f"{SERVING_PREFIX}{kind}" for kind in ("fv:", "pred:", "rl:"))

# Both lookups of an entity in one round trip: its version entry with the milliseconds Redis keeps it (PTTL),
# then the prediction stored under that version; last, the scorer's marker of the feature set (the last key). (The
# prediction keys are built in the script, so this assumes one Redis, not Redis Cluster.)
_LOOKUP_LUA = """
local out = {}
local n = #KEYS - 1
for i = 1, n do
  local version_key = KEYS[i]
  local v = redis.call('GET', version_key)
  if v then
    local version = string.match(v, '^[0-9]+')
    out[i] = {v, redis.call('PTTL', version_key), redis.call('GET', ARGV[1] .. ARGV[i + 1] .. ':' .. version)}
  else
    out[i] = false
  end
end
out[n + 1] = redis.call('GET', KEYS[n + 1])
return out
"""
# Store version entries unless the key holds one read (or a change applied) at or after this read began: a
# request that read an entity's old features just before its change was applied cannot put them back.
_PUT_VERSIONS_LUA = """
local read_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local t = cur and tonumber(string.match(cur, ':([0-9]+)$'))
  if not (t and t >= read_ms) then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2])
  end
end
return 0
"""
TOMBSTONE_MS = 10_000  # a change's marker outlives any read that began before it (reads time out at 5 s)
# A write queued behind an answer waits at most this long for a lookup to share its round trip, then goes alone.
WRITE_BEHIND_S = 0.002
_encode = msgspec.msgpack.Encoder().encode


class _Write(NamedTuple):
    """One queued cache write: version entries (through the put script) and prediction entries."""

    version_keys: list[str]
    version_args: list[Any]
    predictions: list[tuple[str, bytes]]


def serving_redis(url: str | None, username: str | None, password: str | None) -> aioredis.Redis | None:
    """Serving's client of its Redis (None without a URL), logged in as serving's ACL user: short timeouts and no
    retry, so a dead Redis costs a request milliseconds (the caller backs off) instead of seconds."""
    if not url:
        return None
    return aioredis.Redis.from_url(
        url,
        socket_timeout=0.5,
        socket_connect_timeout=0.2,
        retry_on_timeout=False,
        username=username,
        password=password,
    )


class PredictionCache:
    def __init__(
        self,
        url: str | None,
        *,
        ttl_seconds: int,
        backoff_seconds: float = 1.0,
        username: str | None = None,
        password: str | None = None,
    ):
        self._redis = serving_redis(url, username, password)
        # Scripts go by their SHA inside pipelines (loaded on NOSCRIPT): a pipeline handed a script object asks
        # SCRIPT EXISTS first, one more round trip per write.
        self._scripts = [_LOOKUP_LUA, _PUT_VERSIONS_LUA]
        self._lookup_sha, self._put_versions_sha = (hashlib.sha1(lua.encode()).hexdigest() for lua in self._scripts)
        self.ttl = ttl_seconds
        self._backoff = backoff_seconds
        self._skip_until = 0.0
        self._queued: list[_Write] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    @staticmethod
    def version_key(feature_set: str, entity: str) -> str:
        return f"{SERVING_PREFIX}fv:{feature_set}:{entity}"

    @staticmethod
    def scorer_key(feature_set: str) -> str:
        """The scorer's marker of ``feature_set`` (``ScorerEpoch``)."""
        return f"{SERVING_PREFIX}scorer:{feature_set}"

    @staticmethod
    def prediction_prefix(model_key: str, feature_set: str) -> str:
        """Every prediction key starts so; the lookup script appends ``{entity}:{feature version}``."""
        return f"{SERVING_PREFIX}pred:{model_key}:{feature_set}:"

    @classmethod
    def prediction_key(cls, model_key: str, feature_set: str, entity: str, feature_version: int) -> str:
        return f"{cls.prediction_prefix(model_key, feature_set)}{entity}:{feature_version}"

    async def _call(self, op: Callable[[aioredis.Redis], Awaitable[Any]], default: Any) -> Any:
        if self._redis is None or time.monotonic() < self._skip_until:
            return default
        try:
            return await op(self._redis)
        except (TimeoutError, aioredis.RedisError, OSError):
            metrics.REDIS_ERRORS.inc()
            self._skip_until = time.monotonic() + self._backoff
            return default

    async def _execute(self, r: aioredis.Redis, writes: list[_Write], lookup: list[str] | None = None) -> Any:
        """One round trip: the queued ``writes``, then the lookup script on ``lookup`` (its numkeys first) if
        given, whose answer is returned. On NOSCRIPT (a restarted or flushed Redis) the scripts are loaded and the
        pipeline sent again: every write in it is idempotent."""
        for attempt in (1, 2):
            pipe = r.pipeline(transaction=False)
            for write in writes:
                if write.version_keys:
                    pipe.evalsha(
                        self._put_versions_sha, len(write.version_keys), *write.version_keys, *write.version_args
                    )
                for key, value in write.predictions:
                    pipe.set(key, value, ex=self.ttl)
            if lookup is not None:
                pipe.evalsha(self._lookup_sha, *lookup)
            if not len(pipe):
                return None
            try:
                results = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                for lua in self._scripts:
                    await r.script_load(lua)
                continue
            return results[-1] if lookup is not None else None
        raise AssertionError("unreachable")

    def _take_queued(self) -> list[_Write]:
        writes, self._queued = self._queued, []
        return writes

    async def lookup(self, model_key: str, feature_set: str, entities: Sequence[str]) -> list[CacheLookup]:
        """Per entity: its cached version entry (NOT_CACHED if unknown or Redis is unavailable) and the
        prediction for that version (None if absent). Writes queued behind earlier answers share its round
        trip, ahead of it."""
        keys = [self.version_key(feature_set, e) for e in entities]
        keys.append(self.scorer_key(feature_set))
        lookup = [len(keys), *keys, self.prediction_prefix(model_key, feature_set), *entities]
        raw = await self._call(lambda r: self._execute(r, self._take_queued(), lookup), None)
        if raw is None:
            return [NOT_CACHED] * len(entities)
        epoch = ScorerEpoch.decode(raw[len(entities)])
        out: list[CacheLookup] = []
        for item in raw[: len(entities)]:
            if not item:
                out.append(NOT_CACHED)
                continue
            version, _, read_ms = item[0].partition(b":")
            read = int(read_ms or 0)  # an entry without a read time (before the change stream) was read long ago
            pred = _decode(item[2]) if len(item) > 2 and item[2] else None
            covered = epoch.caught_up_ms if epoch is not None and read >= epoch.started_ms else 0
            out.append(CacheLookup(int(version), read, max(0, int(item[1])), pred, covered))
        return out

    def put_behind(
        self,
        feature_set: str,
        versions: dict[str, int],
        predictions: dict[str, CachedPrediction],
        model_key: str,
        *,
        read_ms: int,
        version_ttl_ms: int,
    ) -> None:
        """Store the versions read at ``read_ms`` (kept ``version_ttl_ms``) and their predictions, behind the
        answer: queued, the write rides with the next lookup's round trip, or goes alone after ``WRITE_BEHIND_S``
        (under load a lookup comes first, and a batch of misses costs one Redis round trip). ``flush`` sends it
        now."""
        if self._redis is None or not (versions or predictions):
            return
        self._queued.append(
            _Write(
                [self.version_key(feature_set, e) for e in versions],
                [read_ms, version_ttl_ms, *(f"{v}:{read_ms}" for v in versions.values())],
                [
                    (self.prediction_key(model_key, feature_set, entity, pred.feature_version), _encode(pred))
                    for entity, pred in predictions.items()
                ],
            )
        )
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(WRITE_BEHIND_S, self._flush_behind)

    def _flush_behind(self) -> None:
        self._flush_timer = None
        writes = self._take_queued()
        if writes:  # else a lookup took them along
            task = asyncio.get_running_loop().create_task(self._send(writes))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send(self, writes: list[_Write]) -> None:
        await self._call(lambda r: self._execute(r, writes), None)

    async def flush(self) -> None:
        """Send the queued writes now (and wait for those already on their way)."""
        writes = self._take_queued()
        if writes:
            await self._send(writes)
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def forget(self, feature_set: str, entities: Sequence[str], changed_ms: int) -> bool:
        """Replace the entities' version entries by a marker of the change applied at ``changed_ms`` (version 0:
        no prediction is stored under it, so the next request reads the shard); False if Redis did not confirm."""
        if self._redis is None or not entities:
            return True

        async def mark(r: aioredis.Redis) -> bool:
            pipe = r.pipeline(transaction=False)
            for entity in entities:
                pipe.set(self.version_key(feature_set, entity), f"0:{changed_ms}", px=TOMBSTONE_MS)
            await pipe.execute()
            return True

        return await self._call(mark, False)

    async def close(self) -> None:
        if self._redis is not None:
            await self.flush()
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            await self._redis.aclose()


class SingleFlight:
    """One computation per key among concurrent callers of this process (other workers compute their own)."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future] = {}

    def claim(self, keys: Sequence[str]) -> tuple[list[str], dict[str, asyncio.Future]]:
        """Split ``keys`` into those this caller must compute (it then calls ``resolve``) and futures to await."""
        mine: list[str] = []
        theirs: dict[str, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        for key in keys:
            fut = self._inflight.get(key)
            if fut is None:
                self._inflight[key] = loop.create_future()
                mine.append(key)
            else:
                theirs[key] = fut
        return mine, theirs

    def resolve(self, results: dict[str, Any], keys: Sequence[str], error: BaseException | None = None) -> None:
        for key in keys:
            fut = self._inflight.pop(key, None)
            if fut is None or fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
                fut.exception()  # mark retrieved: a follower may not exist
            else:
                fut.set_result(results.get(key))
