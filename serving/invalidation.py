"""The worker's change consumer: follows every shard's change log (``shardctl/store/changes.py``) and drops the
changed entities from this worker's memory tier and from Redis, so cached predictions can live for their full
TTL and a hot entity costs no shard read until its features change.

Where it reads: from the same server the worker reads features from (``serving.read_target``). On an HA shard
that is the standby, where LISTEN does not work and a change becomes visible only once replayed: reading the
log there means a change is applied no earlier than the features it announces can be read. When the DSN names
several servers but the consumer landed on a primary while reads prefer the standby, changes are applied but
the stream does not count as live (a read on the lagging standby could re-cache the old features), and the
consumer tries the standby again every ``_RETRY_STANDBY_SECONDS``.

Each worker runs its own consumer (one poll per shard every ``invalidation_poll_ms``, a cheap index scan):
it must drop its own memory tier anyway, and a change it has applied is one its own requests cannot re-cache.
A new shard-map epoch (a migration's cutover) restarts every cursor: the stream stops being live until one
full round has been read on the new map, so entries cached before it fall back to the time bound.

The consumer also reads, about once a second per shard on the same connection, how far behind the scorer is
(``serving/scorer/``: when it last had every change of that shard scored), for ``/readyz`` and
``tessera_scorer_lag_seconds``. Serving never waits for the scorer: what it has not covered is scored on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from serving import metrics
from serving.cache import PredictionCache
from serving.freshness import Freshness, now_ms
from serving.local_cache import LocalPredictionCache
from shardctl.store.changes import ChangeCursor, FeatureChange, chunks, poll_changes, start_cursor
from shardctl.store.pools import session_dsn
from shardctl.store.predictions import LAG_SQL
from shardctl.store.retry import is_multi_host
from shardctl.store.shardmap import ShardMap

log = logging.getLogger(__name__)

_RETRY_STANDBY_SECONDS = 5.0
_LAG_EVERY_SECONDS = 1.0


@dataclass
class _ShardFeed:
    conn: psycopg.AsyncConnection
    cursor: ChangeCursor
    wants_standby: bool
    connected_at: float
    on_standby: bool
    lag_read_at: float = 0.0


class ChangeConsumer:
    """``start()`` runs the polling task on the worker's event loop; ``stop()`` cancels it and closes its
    connections. ``freshness`` is live only while every shard was read within its ``stale_after``."""

    def __init__(
        self,
        shard_map: Callable[[], ShardMap],
        *,
        read_target: str,
        freshness: Freshness,
        local: LocalPredictionCache,
        cache: PredictionCache,
        poll_interval_seconds: float,
    ):
        self._shard_map = shard_map
        self._read_target = read_target
        self.freshness = freshness
        self._local = local
        self._cache = cache
        self._interval = poll_interval_seconds
        self._epoch: int | None = None
        self._feeds: dict[int, _ShardFeed] = {}
        self._pending: list[tuple[str, tuple[str, ...], int]] = []  # Redis markers not yet confirmed
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # completed polling rounds (tests wait on it instead of on time)
        # Per shard: seconds since the scorer last had that shard's changes scored, as of ``_lag_at`` (monotonic);
        # None: no scorer has run there, or the shard could not be read.
        self._scorer_lags: dict[int, tuple[float | None, float]] = {}

    def start(self) -> ChangeConsumer:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tessera-change-consumer")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_all()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                live = await self.poll_once()
            except Exception:  # a bug here must not stop invalidation for good: fall back, log, go on
                log.exception("change consumer round failed")
                live = False
            if live:
                self.freshness.mark_live()
            else:
                self.freshness.mark_broken()
            metrics.CHANGE_STREAM_LIVE.set(1 if live else 0)
            self.rounds += 1
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    async def poll_once(self) -> bool:
        """One round over every shard of the current map; True if all were read (from the right server) and
        every change is applied, in memory and in Redis."""
        shard_map = self._shard_map()
        if shard_map.epoch != self._epoch:
            await self._close_all()
            self._epoch = shard_map.epoch
        read = await asyncio.gather(*(self._poll_shard(i, dsn) for i, dsn in enumerate(shard_map.dsns)))
        applied = await self._flush_pending()
        return all(read) and applied

    async def _poll_shard(self, index: int, dsn: str) -> bool:
        feed = self._feeds.get(index)
        try:
            if feed is None:
                feed = self._feeds[index] = await self._open(dsn)
            result = await poll_changes(feed.conn, feed.cursor)
        except psycopg.Error as exc:
            log.warning("change log of shard %s unreadable (%s): answers fall back to the time bound", index, exc)
            await self._drop(index)
            return False
        for change in result.changes:
            self._apply(change)
        feed.on_standby = result.on_standby
        if time.monotonic() - feed.lag_read_at >= _LAG_EVERY_SECONDS:
            await self._read_scorer_lag(index, feed)
        if feed.wants_standby and not feed.on_standby:
            if time.monotonic() - feed.connected_at > _RETRY_STANDBY_SECONDS:
                await self._drop(index)  # try the standby again next round
            return False
        return True

    async def _read_scorer_lag(self, index: int, feed: _ShardFeed) -> None:
        feed.lag_read_at = now = time.monotonic()
        try:
            row = await (await feed.conn.execute(LAG_SQL)).fetchone()
        except psycopg.Error:  # a server without the table yet: unknown, and the change feed goes on
            self._scorer_lags[index] = (None, now)
        else:
            self._scorer_lags[index] = (row[0] if row else None, now)
        lag, known = self.scorer_lag()
        metrics.SCORER_LAG_SECONDS.set(lag if known and lag is not None else -1)

    def scorer_lag(self) -> tuple[float | None, bool]:
        """The slowest shard's scorer lag in seconds now, and whether it is known for every shard of the map (a
        shard never scored, or unread: lag None and False)."""
        count = len(self._shard_map().dsns)
        now = time.monotonic()
        lags = []
        for index in range(count):
            lag, read_at = self._scorer_lags.get(index, (None, 0.0))
            if lag is None:
                return None, False
            lags.append(lag + (now - read_at))
        lag = max(lags) if lags else None
        return lag, lag is not None

    async def _open(self, dsn: str) -> _ShardFeed:
        wants_standby = self._read_target == "prefer-standby" and is_multi_host(dsn)
        conn = await psycopg.AsyncConnection.connect(
            session_dsn(dsn, self._read_target),
            autocommit=True,
            connect_timeout=1,
            options="-c statement_timeout=2000",
        )
        try:
            cursor, on_standby = await start_cursor(conn)
        except BaseException:
            await conn.close()
            raise
        return _ShardFeed(conn, cursor, wants_standby, time.monotonic(), on_standby)

    def _apply(self, change: FeatureChange) -> None:
        """Drop the entities from memory now; queue their Redis markers (sent before the round ends)."""
        ids = change.entity_ids
        self.freshness.record_invalidation(change.feature_set, frozenset(ids))
        if len(ids) > self._local.capacity:
            self._local.clear()  # cheaper than a million pops on the event loop
        else:
            self._local.forget(change.feature_set, ids)
        changed_ms = now_ms()
        self._pending.extend((change.feature_set, part, changed_ms) for part in chunks(ids))
        metrics.INVALIDATED_ENTITIES.inc(len(ids))

    async def _flush_pending(self) -> bool:
        while self._pending:
            feature_set, ids, changed_ms = self._pending[0]
            if not await self._cache.forget(feature_set, ids, changed_ms):
                return False  # Redis unavailable: retried next round; not live meanwhile
            self._pending.pop(0)
        return True

    async def _drop(self, index: int) -> None:
        self._scorer_lags.pop(index, None)
        feed = self._feeds.pop(index, None)
        if feed is not None:
            with contextlib.suppress(psycopg.Error):
                await feed.conn.close()

    async def _close_all(self) -> None:
        for index in list(self._feeds):
            await self._drop(index)
