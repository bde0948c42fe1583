"""The scorer's work: follow every server's change log from its durable cursor, score the changed entities in
batches with the promoted model's MOJO (serving's own ``LoadedModel``, on a ThreadPoolExecutor), and write each
prediction beside its features (``shardctl/store/predictions.py``), tagged with the model version and the
features it was computed from.

One round per server every ``poll_ms``: take the time, read the changes since the cursor, score the entities of the
model's feature set in batches of ``batch_size`` (each batch one read, one scoring call split over the pool's
threads, one write transaction), then save the cursor with that time as ``caught_up_at`` (after a round that
scored, else once every ``heartbeat_seconds``). The cursor is saved only after every batch of the round is
committed: a scorer killed mid-batch re-reads those changes from the saved cursor when it starts again, so
nothing is lost (a prediction written twice is the same row).

Catch-up, instead of the change log, where the log cannot say what changed: a server with no saved cursor (a new
scorer or server), one saved longer ago than the log's retention (``CHANGE_LOG_RETENTION``: changes may have
been pruned), or under another shard-map epoch (a resharding cutover moved logical shards, whose copied rows the
target's log does not name). Catch-up deletes the predictions of logical shards placed elsewhere and scores every
entity of the server's logical shards that has no current prediction. ``rescore`` is the same pass over every
server, run by the Dagster job on each promotion and rollback (``orchestration/defs/predictions.py``).

Promotions reach the scorer as they reach serving (NOTIFY on the registry's channel, ``ModelHolder``); a batch
scored with the previous model just before the swap writes predictions tagged with that version, which serving
never reads for the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from prometheus_client import Counter, Gauge
from psycopg.types.json import set_json_loads

from serving.cache import ScorerEpoch
from serving.freshness import now_ms
from serving.scorer.cache_fill import CacheEntry, CacheFiller, scored_entry
from serving.scorer.settings import ScorerSettings
from serving.scoring import LoadedModel, ModelHolder, Score
from shardctl.credentials import with_credentials
from shardctl.errors import first_line
from shardctl.java import JavaSettings
from shardctl.settings import TesseraSettings
from shardctl.store.changes import ChangeCursor, poll_changes, start_cursor
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS, entity_hash
from shardctl.store.notify import NotificationListener
from shardctl.store.pools import session_dsn
from shardctl.store.predictions import (
    COUNT_SQL,
    CURRENT_PAGE_SQL,
    FEATURES_TO_SCORE_SQL,
    MISPLACED_DELETE_SQL,
    SCORED_READ_SQL,
    STALE_PAGE_SQL,
    ScoredRow,
    load_cursor,
    save_cursor,
    write_predictions,
)
from shardctl.store.registry import PROMOTION_CHANNEL, ModelRegistry, ModelVersion
from shardctl.store.shardmap import ShardMap, ShardMapStore, ShardMapWatcher

log = logging.getLogger(__name__)

# A cursor saved longer ago than this may have missed pruned changes (the log keeps 10 minutes): catch up instead.
RESUME_WITHIN_SECONDS = 8 * 60

SCORED = Counter("tessera_scorer_scored_rows_total", "Rows the scorer scored and wrote", ["reason"])
ROUNDS = Counter("tessera_scorer_rounds_total", "Completed rounds over every server's change log")
LAG = Gauge("tessera_scorer_caught_up_seconds", "Seconds since the slowest server's changes were all scored")
BATCH_SECONDS = Gauge("tessera_scorer_last_batch_seconds", "Duration of the last batch (read, score, write)")


@dataclass
class _Server:
    conn: psycopg.AsyncConnection
    cursor: ChangeCursor
    saved_at: float = 0.0  # monotonic
    caught_up_at: float = field(default_factory=time.time)  # wall clock, for the gauge


class _FailingServers:
    """Logs a server's failing rounds once when they start, then every ``REPEAT_S`` while they last, and once when
    the server answers again: a failover retried every round must not write 20 warnings a second."""

    REPEAT_S = 10.0

    def __init__(self) -> None:
        self._since: dict[int, tuple[float, float, int]] = {}  # index -> (first failure, last logged, failures)

    def note(self, index: int, error: BaseException) -> None:
        now = time.monotonic()
        first, logged, count = self._since.get(index, (now, 0.0, 0))
        count += 1
        if count == 1 or now - logged >= self.REPEAT_S:
            log.warning(
                "server %s: change log round failed (%s); reconnecting (%d failed rounds in %.0fs)",
                index,
                first_line(error),
                count,
                now - first,
            )
            logged = now
        self._since[index] = (first, logged, count)

    def cleared(self, index: int) -> None:
        failed = self._since.pop(index, None)
        if failed is not None:
            since, _, count = failed
            seconds = time.monotonic() - since
            log.info("server %s: following again after %.1fs (%d failed rounds)", index, seconds, count)


@dataclass
class Progress:
    """What a catch-up or re-score did, for logs and the Dagster job's metadata."""

    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rows_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


async def _configure(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(msgspec.json.decode, conn)


class Scorer:
    """``await run(stop)`` follows the change logs until ``stop`` is set; ``await rescore()`` re-scores every
    entity without a current prediction of the promoted model (every one, with ``force``)."""

    def __init__(self, settings: TesseraSettings, scorer: ScorerSettings):
        if not settings.catalog_dsn:
            raise RuntimeError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        self.settings = scorer
        self.catalog_dsn = with_credentials(settings.catalog_dsn, scorer.db_credentials())
        self.holder = ModelHolder(ModelRegistry(self.catalog_dsn), settings.model_name, JavaSettings().java_home)
        self.pool = ThreadPoolExecutor(scorer.threads, thread_name_prefix="tessera-scorer")
        # Serving's cache, filled as predictions are made (None: no Redis configured; the table alone).
        self.cache: CacheFiller | None = None
        if settings.redis_url:
            user, password = scorer.redis_credentials()
            self.cache = CacheFiller(
                settings.redis_url, ttl_seconds=scorer.cache_ttl_seconds, username=user, password=password
            )
        # The epoch of the cache this scorer keeps (see _keep_cache_epoch), for which model key, and whether a
        # change may have gone unreflected since it began (a failed write, a catch-up): then a new epoch.
        self.cache_epoch: ScorerEpoch | None = None
        self._cache_model: str | None = None
        self._cache_broken = False
        self._watcher: ShardMapWatcher | None = None
        self._listener: NotificationListener | None = None
        self._servers: dict[int, _Server] = {}
        self._failing = _FailingServers()
        self._epoch: int | None = None
        self.rounds = 0
        # When the loop last made progress: a completed round, or a page of a catch-up (which can take minutes on
        # a large server; liveness must not kill it midway).
        self.last_round_at = time.monotonic()
        self.following = False  # the last round read every server

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open(self) -> Scorer:
        """Load the promoted model (if any), follow promotions and the shard map."""
        self.holder.refresh()
        self._listener = NotificationListener(
            self.catalog_dsn, PROMOTION_CHANNEL, self.holder.refresh, on_reconnect=self.holder.refresh
        ).start()
        self._watcher = ShardMapStore(self.catalog_dsn).watch(role="scorer")
        return self

    async def close(self) -> None:
        await self._close_servers()
        if self._listener is not None:
            self._listener.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self.pool.shutdown(wait=True)
        if self.cache is not None:
            await self.cache.close()

    @property
    def shard_map(self) -> ShardMap:
        assert self._watcher is not None, "open() first"
        return self._watcher.current

    # -- following the change logs -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.poll_ms / 1000
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.round()
            except Exception:  # a bug must not stop the scorer for good: log, reconnect, go on
                log.exception("scorer round failed")
                await self._close_servers()
                self.following = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.monotonic() - started)))

    async def round(self) -> bool:
        """One round over every server of the current map; True if every server was read and its changes scored."""
        shard_map = self.shard_map
        if shard_map.epoch != self._epoch:
            await self._close_servers()  # reopened under the new epoch: each catches up its placement
            self._epoch = shard_map.epoch
        model = self.holder.current
        results = await asyncio.gather(
            *(self._server_round(i, dsn, shard_map, model) for i, dsn in enumerate(shard_map.dsns)),
            return_exceptions=True,
        )
        ok = True
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                ok = False
                self._failing.note(index, result)
                await self._drop(index)
            else:
                self._failing.cleared(index)
        if ok and model is not None and self.cache is not None and results:
            await self._keep_cache_epoch(model, shard_map, min(r for r in results if isinstance(r, datetime)))
        self.following = ok
        self.rounds += 1
        self.last_round_at = time.monotonic()
        ROUNDS.inc()
        if self._servers:
            LAG.set(max(time.time() - s.caught_up_at for s in self._servers.values()))
        return ok

    async def _server_round(self, index: int, dsn: str, shard_map: ShardMap, model: LoadedModel | None) -> datetime:
        """Score the changes since the server's cursor; returns the server's clock when it began: every change
        committed before it has been scored (and reflected in serving's cache)."""
        server = self._servers.get(index)
        if server is None:
            server = self._servers[index] = await self._open_server(index, dsn, shard_map, model)
        conn = server.conn
        polled_at = await _clock(conn)
        # A copy: the saved cursor moves only once this round's predictions are committed.
        trial = ChangeCursor(server.cursor.watermark, dict(server.cursor.handled))
        result = await poll_changes(conn, trial)
        ids: dict[str, None] = {}
        if model is not None:
            feature_set = model.version.feature_set
            for change in result.changes:
                if change.feature_set == feature_set:
                    ids.update(dict.fromkeys(change.entity_ids))
        if ids and model is not None:
            entities = list(ids)
            size = self.settings.batch_size
            for start in range(0, len(entities), size):
                await self._score_entities(conn, model, entities[start : start + size])
        # Saved after scoring, else once a heartbeat: not whenever the watermark moved, since this save's own
        # commit moves it (that saved the cursor every round, 20 writes a second per server, on an idle store).
        heartbeat_due = time.monotonic() - server.saved_at >= self.settings.heartbeat_seconds
        if result.changes or heartbeat_due:
            await save_cursor(conn, trial, polled_at, shard_map.epoch, self.settings.name)
            server.saved_at = time.monotonic()
            server.caught_up_at = polled_at.timestamp()
        server.cursor = trial
        return polled_at

    async def _open_server(self, index: int, dsn: str, shard_map: ShardMap, model: LoadedModel | None) -> _Server:
        # No statement timeout: a catch-up page may scan far past current predictions before it finds a stale one.
        conn = await psycopg.AsyncConnection.connect(session_dsn(dsn, "read-write"), autocommit=True, connect_timeout=5)
        try:
            await _configure(conn)
            saved = await load_cursor(conn, self.settings.name)
            if saved is not None and saved.age_seconds <= RESUME_WITHIN_SECONDS and saved.epoch == shard_map.epoch:
                log.info("server %s: resuming from the saved cursor (watermark %s)", index, saved.cursor.watermark)
                return _Server(conn, saved.cursor)
            started_at = await _clock(conn)
            if saved is not None and saved.age_seconds <= RESUME_WITHIN_SECONDS:
                cursor = saved.cursor  # the log is complete since it: only the placement needs catching up
                why = f"the shard map moved from epoch {saved.epoch} to {shard_map.epoch}"
            else:
                cursor, _ = await start_cursor(conn)
                why = "no saved cursor" if saved is None else f"cursor saved {saved.age_seconds:.0f}s ago"
            placed = _placements(shard_map)[index]
            # A catch-up cannot name what changed since the cursor (deleted entities above all): whatever serving's
            # cache holds of this server is no longer known to be current, so its epoch ends.
            self._cache_broken = True
            await conn.execute(MISPLACED_DELETE_SQL, (placed,))
            if model is not None:
                progress = Progress()
                log.info("server %s: catching up (%s)", index, why)
                await self._catch_up(conn, model, placed, progress, reason="catch-up")
                log.info("server %s: caught up, %d rows scored in %.1fs", index, progress.done, progress.seconds)
            await save_cursor(conn, cursor, started_at, shard_map.epoch, self.settings.name)
            return _Server(conn, cursor, time.monotonic(), started_at.timestamp())
        except BaseException:
            await conn.close()
            raise

    # -- serving's cache -----------------------------------------------------------------------------------
    async def _keep_cache_epoch(self, model: LoadedModel, shard_map: ShardMap, caught_up: datetime) -> None:
        """After a round that read every server: move the marker of the model's feature set in serving's cache to
        ``caught_up`` (every change committed before it is reflected there), or begin a new epoch.

        An epoch lasts while every change is reflected: each one scored and written into the cache (or a version-0
        entry that sends the next request to the shard). It ends when a write failed, a server caught up instead
        of following its log, the model changed, or the marker in Redis is not ours any more (Redis restarted or
        was flushed: its entries went with it). A new epoch begins at ``caught_up`` and is filled from the table
        (every current prediction), so a cache that lost its data is warm again in seconds; serving trusts an entry
        beyond its own bounds only if it was read after its epoch began (``serving/freshness.py``)."""
        assert self.cache is not None
        feature_set = model.version.feature_set
        caught_up_ms = int(caught_up.timestamp() * 1000)
        epoch = self.cache_epoch
        if epoch is not None and (self._cache_broken or self._cache_model != model.key):
            epoch = None
        if epoch is not None:
            answered, seen = await self.cache.epoch(feature_set)
            if not answered or seen != epoch:
                epoch = None
        if epoch is None:
            self.cache_epoch = None
            self._cache_broken = False
            epoch = ScorerEpoch(caught_up_ms, caught_up_ms)
            if not await self._fill_cache(model, shard_map) or self._cache_broken:
                return  # a new epoch at the next round
            self._cache_model = model.key
        epoch = ScorerEpoch(epoch.started_ms, caught_up_ms)
        # Kept long enough to outlive any pause of this scorer that serving should see as a lag, not as a flush.
        if await self.cache.mark(feature_set, epoch, keep_seconds=max(600.0, self.settings.stall_seconds * 2)):
            self.cache_epoch = epoch

    async def _fill_cache(self, model: LoadedModel, shard_map: ShardMap) -> bool:
        """Copy every current prediction of ``model`` from each server's table into serving's cache (servers at
        once, pages of ``batch_size`` of one logical shard at a time); False if a write failed."""
        assert self.cache is not None
        cache = self.cache
        version = model.version
        started = time.monotonic()

        async def fill(index: int, placed: list[int]) -> int:
            server = self._servers.get(index)
            if server is None:
                return 0
            filled = 0
            for shard in placed:
                after = ""
                while True:
                    read_ms = now_ms()
                    params = _page(version, shard, after, self.settings.batch_size)
                    rows = await (await server.conn.execute(CURRENT_PAGE_SQL, params)).fetchall()
                    entries = [scored_entry(e, v, score, label, ts, at) for e, v, ts, at, score, label in rows]
                    if await cache.put(model.key, version.feature_set, entries, read_ms=read_ms) is None:
                        return -1
                    filled += len(rows)
                    self.last_round_at = time.monotonic()
                    if len(rows) < self.settings.batch_size:
                        break
                    after = rows[-1][0]
            return filled

        counts = await asyncio.gather(*(fill(i, placed) for i, placed in enumerate(_placements(shard_map))))
        if any(c < 0 for c in counts):
            return False
        log.info(
            "serving's cache: a new epoch, %d current predictions copied in %.1fs",
            sum(counts),
            time.monotonic() - started,
        )
        return True

    # -- scoring --------------------------------------------------------------------------------------------
    async def _score_entities(self, conn: psycopg.AsyncConnection, model: LoadedModel, entities: list[str]) -> None:
        logical = [entity_hash(e) % TOTAL_LOGICAL_SHARDS for e in entities]
        feature_set = model.version.feature_set
        rows = await (await conn.execute(FEATURES_TO_SCORE_SQL, (feature_set, logical, entities))).fetchall()
        found = {r[1] for r in rows}
        gone = [(shard, e) for shard, e in zip(logical, entities, strict=True) if e not in found]
        _, refused = await self._score_rows(conn, model, rows, gone, reason="change")
        # Refused by serving's cache for a later entry: mostly serving's consumer marking this very change a few
        # ms after this read. Written again from a fresh read of the current predictions (a few tries: a change
        # after that read has its own turn in the log).
        for _ in range(3):
            if not refused or self.cache is None:
                break
            refused = await self._rewrite_current(conn, model, refused)

    async def _rewrite_current(
        self, conn: psycopg.AsyncConnection, model: LoadedModel, entities: list[str]
    ) -> list[str]:
        """Put the current predictions of ``entities`` into serving's cache again; returns those refused again."""
        assert self.cache is not None
        version = model.version
        logical = [entity_hash(e) % TOTAL_LOGICAL_SHARDS for e in entities]
        read_ms = now_ms()
        params = (version.model_name, version.version, version.feature_set, logical, entities)
        rows = await (await conn.execute(SCORED_READ_SQL, params)).fetchall()
        entries = [
            scored_entry(e, v, score, label, ts, at) for e, _, ts, at, v, score, label in rows if score is not None
        ]
        refused = await self.cache.put(model.key, version.feature_set, entries, read_ms=read_ms)
        if refused is None:
            self._cache_broken = True
            return []
        return refused

    async def _score_rows(
        self,
        conn: psycopg.AsyncConnection,
        model: LoadedModel,
        rows: Sequence[tuple[Any, ...]],
        gone: Sequence[tuple[int, str]],
        *,
        reason: str,
    ) -> tuple[int, list[str]]:
        """Score ``rows``, write the predictions of those still current and delete those of ``gone``, then put
        them into serving's cache; returns the rows written and the entities the cache refused (see
        ``cache_fill``)."""
        started = time.perf_counter()
        scores = await self.score([r[2] for r in rows], model)
        scored = [ScoredRow(r[0], r[1], r[3], r[4], s.score, s.label) for r, s in zip(rows, scores, strict=True)]
        version = model.version
        # Before the write's snapshot: a change committed after it is later than this, so its marker (or the
        # scorer's next write) wins over this entry in the cache; a change before it keeps the row from the write.
        read_ms = now_ms()
        async with conn.transaction():
            written = await write_predictions(
                conn, version.model_name, version.version, version.feature_set, scored, gone
            )
        SCORED.labels(reason).inc(len(scored))
        refused: list[str] | None = []
        if self.cache is not None:
            entries = [
                scored_entry(r[1], r[3], s.score, s.label, r[5], r[6])
                if r[1] in written
                else CacheEntry(r[1], r[3], None)
                for r, s in zip(rows, scores, strict=True)
            ]
            entries += [CacheEntry(entity, 0, None) for _, entity in gone]
            refused = await self.cache.put(model.key, version.feature_set, entries, read_ms=read_ms)
            if refused is None:
                self._cache_broken = True
        BATCH_SECONDS.set(time.perf_counter() - started)
        return len(written), refused or []

    async def score(self, features: Sequence[dict[str, Any]], model: LoadedModel) -> list[Score]:
        """Score rows on the pool, split over its threads (each part one MOJO call)."""
        if not features:
            return []
        loop = asyncio.get_running_loop()
        parts = max(1, min(self.settings.threads, len(features) // 50 or 1))
        size = -(-len(features) // parts)
        chunks = [features[i : i + size] for i in range(0, len(features), size)]
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, model.score, c) for c in chunks))
        return [s for part in results for s in part]

    async def _catch_up(
        self,
        conn: psycopg.AsyncConnection,
        model: LoadedModel,
        placed: list[int],
        progress: Progress,
        *,
        force: bool = False,
        reason: str,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        """Score every entity of ``placed`` logical shards with no current prediction of ``model`` (all, with
        ``force``), in key order: pages of one logical shard at a time, gathered into batches of ``batch_size``."""
        version = model.version
        batch_size = self.settings.batch_size
        batch: list[tuple[Any, ...]] = []

        async def score_batch() -> None:
            await self._score_rows(conn, model, batch, (), reason=reason)
            self.last_round_at = time.monotonic()
            progress.done += len(batch)
            if on_progress is not None:
                on_progress(progress)
            batch.clear()

        for shard in placed:
            after = ""
            while True:
                limit = batch_size - len(batch)
                params = _page(version, shard, after, limit, force=force)
                rows = await (await conn.execute(STALE_PAGE_SQL, params)).fetchall()
                batch += rows
                if len(batch) >= batch_size:
                    await score_batch()
                if len(rows) < limit:
                    break
                after = rows[-1][1]
        if batch:
            await score_batch()

    async def rescore(self, *, force: bool = False, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Every server at once: score every entity of its logical shards without a current prediction of the
        promoted model (``force``: every entity). Raises ``RuntimeError`` when no model is promoted."""
        model = self.holder.current
        if model is None:
            raise RuntimeError(f"no version of model {self.holder.model_name!r} is promoted: nothing to score with")
        shard_map = self.shard_map
        progress = Progress()
        conns = []
        try:
            for dsn in shard_map.dsns:
                conn = await psycopg.AsyncConnection.connect(
                    session_dsn(dsn, "read-write"), autocommit=True, connect_timeout=5
                )
                conns.append(conn)
                await _configure(conn)
            placements = _placements(shard_map)
            for conn, placed in zip(conns, placements, strict=True):
                count = await (await conn.execute(COUNT_SQL, (model.version.feature_set, placed))).fetchone()
                progress.total += int(count[0])
            await asyncio.gather(
                *(
                    self._catch_up(
                        conn, model, placed, progress, force=force, reason="rescore", on_progress=on_progress
                    )
                    for conn, placed in zip(conns, placements, strict=True)
                )
            )
        finally:
            for conn in conns:
                await conn.close()
        return progress

    # -- connections ----------------------------------------------------------------------------------------
    async def _drop(self, index: int) -> None:
        server = self._servers.pop(index, None)
        if server is not None:
            with contextlib.suppress(psycopg.Error):
                await server.conn.close()

    async def _close_servers(self) -> None:
        for index in list(self._servers):
            await self._drop(index)


def _page(version: ModelVersion, shard: int, after: str, limit: int, **extra: object) -> dict[str, object]:
    """The parameters of a keyset page of one logical shard (``STALE_PAGE_SQL``, ``CURRENT_PAGE_SQL``)."""
    return {
        "model": version.model_name,
        "version": version.version,
        "feature_set": version.feature_set,
        "shard": shard,
        "after": after,
        "limit": limit,
        **extra,
    }


def _placements(shard_map: ShardMap) -> list[list[int]]:
    """Each server's logical shards, by server index."""
    return [
        [s for s, server in enumerate(shard_map.placement) if server == index] for index in range(len(shard_map.dsns))
    ]


async def _clock(conn: psycopg.AsyncConnection) -> datetime:
    """The server's clock now: every change committed before it is visible to the next statement."""
    return (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]
