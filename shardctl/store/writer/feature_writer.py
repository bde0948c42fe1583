"""Bulk writes of feature rows: validate, route (id -> logical shard -> server), binary COPY + one merge per server.

The batch is all-or-nothing as far as Postgres can make it without two-phase commit:

1. Rows are validated in chunks (a bad row raises ``BadFeatureRowError`` naming its position and id) and
   each valid chunk is routed and streamed at once into every server's open transaction: binary ``COPY``
   into a temporary staging table (or, for fresh entities, straight into the table under a savepoint). A bad
   row anywhere aborts every shard's COPY and rolls every shard back: nothing of the batch is ever committed
   anywhere. Validation completes before any commit, and overlapping it with the COPY keeps the writer near
   raw ``COPY`` speed. Before the merge each server's transaction checks the per-logical-shard fence of every
   logical shard it wrote (``shardctl/store/fence.py``): a cutover that fenced one of them refuses the batch,
   which rolls back, waits for the new epoch and is routed again (the caller sees latency, not an error).
2. Staged rows are merged with ``INSERT ... ON CONFLICT DO UPDATE`` in sub-batches, on a pool thread
   while the next rows are validated; the last sub-batch of every shard is merged in parallel. No shard
   commits until every shard has merged; if any fails, all roll back (``FeatureWriteError``).
3. Then the shards commit. A commit failing after another shard committed (the shard died in that
   millisecond) raises ``PartialCommitError`` naming both sets; the batch is idempotent, so re-running it
   completes it without changing the shards that already have it.

Idempotent: the merge updates a row only when its features or event time differ
(``IS DISTINCT FROM``), so re-writing a batch leaves no dead tuples and bumps no ``version``. A row with an
older event time than the stored one is left alone (the newest event wins, whatever the write order).

Fresh entities take a fast path: if a probe of the batch's first keys on a shard finds none stored, the
rows are copied straight into the table under a savepoint (no staging pass); a unique violation rolls back
to the savepoint and the rows are staged and merged instead.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import set_json_dumps

from shardctl.store import fence
from shardctl.store.errors import FeatureWriteError, ShardUnavailableError
from shardctl.store.pools import ShardPools
from shardctl.store.shardmap import ShardMap, ShardMapWatcher
from shardctl.store.validation import CopyRow, FeatureRow, RowValidator, validate_feature_set
from shardctl.store.writer.batch import RoutedBatch
from shardctl.store.writer.commit import failover_retryable
from shardctl.store.writer.streaming import ShardResult

log = logging.getLogger(__name__)

_CHUNK_ROWS = 1000  # small chunks keep the shards fed while the next chunk is validated
_MERGE_ROWS = 50_000  # a shard merges staged rows in sub-batches this size, overlapping the next validation


@dataclass
class WriteReport:
    """What a batch did: rows routed to each shard, the epoch it was routed with, and the merge's counts."""

    feature_set: str
    epoch: int
    rows_per_shard: dict[int, int]
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    retries: int = 0
    fast_path_shards: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.rows_per_shard.values())


class FeatureWriter:
    """Writes feature batches to the shards of the current shard map (a ``ShardMap`` or a watcher)."""

    def __init__(
        self,
        shard_maps: ShardMap | ShardMapWatcher,
        *,
        pool_size: int = 2,
        connect_timeout: int = 5,
        fresh_fast_path: bool = True,
        temp_buffers: str = "128MB",
        chunk_rows: int = _CHUNK_ROWS,
        merge_rows: int = _MERGE_ROWS,
        failover_deadline: float = 30.0,
        fence_wait_s: float = 30.0,
    ):
        if chunk_rows < 1 or merge_rows < 1:
            raise ValueError(f"chunk_rows and merge_rows must be >= 1, got {chunk_rows}, {merge_rows}")
        self._maps = shard_maps
        self.failover_deadline = failover_deadline
        self.fence_wait_s = fence_wait_s
        self.fresh_fast_path = fresh_fast_path
        self.chunk_rows = chunk_rows
        self.merge_rows = merge_rows
        self._pools = ShardPools(
            "tessera-writer",
            min_size=0,
            max_size=pool_size,
            connect_timeout=connect_timeout,
            acquire_timeout=float(connect_timeout),
            autocommit=False,
            options=f"-c temp_buffers={temp_buffers}",
            configure=_configure_connection,
        )
        self._executor: ThreadPoolExecutor | None = None

    @property
    def shard_map(self) -> ShardMap:
        return self._maps.current if isinstance(self._maps, ShardMapWatcher) else self._maps

    def write(self, feature_set: str, rows: Iterable[FeatureRow]) -> WriteReport:
        """Upsert ``rows`` for ``feature_set``; see the module docstring for the guarantees."""
        started = time.perf_counter()
        validate_feature_set(feature_set)
        with _cyclic_gc_paused():
            return self._write(feature_set, rows, started)

    def _write(self, feature_set: str, rows: Iterable[FeatureRow], started: float) -> WriteReport:
        validator = RowValidator()
        source = iter(rows)
        prepared: list[CopyRow] = []
        hashes: list[int] = []
        shard_map = self.shard_map
        retries = 0
        while True:
            try:
                report = self._write_routed(shard_map, feature_set, validator, source, prepared, hashes)
                break
            except (ShardUnavailableError, FeatureWriteError) as exc:
                # A shard's primary went away (failover, switchover): the batch is idempotent, so run it
                # again on fresh connections (the multi-host DSN finds the new primary) until the deadline.
                if not failover_retryable(exc, shard_map) or time.perf_counter() - started > self.failover_deadline:
                    raise
                log.info("%s; retrying after a failover", exc)
                self._pools.close()
                time.sleep(0.2)
                retries += 1
            except fence.FencedError as exc:
                # A cutover fenced logical shards this batch writes: wait for the epoch that moves them (or, if
                # the cutover gives up, the one that keeps them) and route again.
                shard_map = self._wait_for_epoch(exc, shard_map, started)
                retries += 1
        report.retries = retries
        report.seconds = time.perf_counter() - started
        return report

    def _wait_for_epoch(self, exc: fence.FencedError, shard_map: ShardMap, started: float) -> ShardMap:
        left = self.fence_wait_s - (time.perf_counter() - started)
        if not isinstance(self._maps, ShardMapWatcher) or left <= 0:
            raise exc
        latest = self._maps.wait_for_epoch(exc.fence_epoch, left)
        if latest.epoch < exc.fence_epoch:
            raise exc
        log.info("%s; routing again on epoch %s", exc, latest.epoch)
        return latest

    def _chunks(self, validator: RowValidator, source: Iterator[FeatureRow], prepared: list, hashes: list):
        """Already validated rows first (a retry), then the rest of ``source``, validated chunk by chunk."""
        size = self.chunk_rows
        for start in range(0, len(prepared), size):
            yield prepared[start : start + size], hashes[start : start + size]
        while True:
            chunk, chunk_hashes = validator.take(source, size)
            if not chunk:
                return
            prepared.extend(chunk)
            hashes.extend(chunk_hashes)
            yield chunk, chunk_hashes

    def _write_routed(self, shard_map: ShardMap, feature_set: str, validator, source, prepared, hashes) -> WriteReport:
        """Validate and route chunk by chunk, streaming each chunk's rows into every shard's open COPY at once;
        then merge on all shards in parallel, and commit only once all rows were valid and every shard merged.

        One thread does all the Python work (validation, encoding, writing to the sockets) while the shards'
        Postgres backends work in parallel: a second Python thread would only fight it for the GIL.
        """
        batch = RoutedBatch(
            shard_map,
            feature_set,
            self._pools.pools_for(shard_map),
            self._pool_executor(),
            fresh_fast_path=self.fresh_fast_path,
            merge_rows=self.merge_rows,
        )
        try:
            batch.stream(self._chunks(validator, source, prepared, hashes))
            batch.finish_and_check_fences()
            results = batch.merge()
            batch.commit()
        finally:
            batch.release()
        return _report(shard_map, feature_set, batch.rows_per_shard, results)

    def _pool_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tessera-writer")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pools.close()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _report(
    shard_map: ShardMap, feature_set: str, rows_per_shard: dict[int, int], results: dict[int, ShardResult]
) -> WriteReport:
    """What the committed batch did: rows per server, and the merge's counts (a row neither inserted nor updated
    was already stored with the same features: the merge left it alone)."""
    report = WriteReport(feature_set, shard_map.epoch, dict(sorted(rows_per_shard.items())))
    for i, result in sorted(results.items()):
        report.inserted += result.inserted
        report.updated += result.updated
        report.unchanged += rows_per_shard[i] - result.inserted - result.updated
        if result.fast_path:
            report.fast_path_shards.append(i)
    return report


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a write. A batch allocates millions of small objects, and
    each full collection walks every object alive (the caller's rows included): at 1M rows that is a
    large share of the writer's time, for objects that hold no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _passthrough(encoded: bytes) -> bytes:
    return encoded


def _configure_connection(conn: psycopg.Connection) -> None:
    """Features arrive already JSON-encoded (by ``validate_rows``): the jsonb dumper passes them through."""
    set_json_dumps(_passthrough, conn)
