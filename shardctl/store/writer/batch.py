"""One attempt at a batch, routed on one shard-map epoch, step by step: route and stream the rows into every
server's open transaction, finish the COPYs and check the fences, merge, commit; and, whatever happens, give the
connections back. ``FeatureWriter`` runs the steps in that order and retries the whole attempt (on another
epoch, after a failover); the guarantees the order gives are in ``feature_writer``'s docstring."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg_pool import ConnectionPool

from shardctl.store import fence
from shardctl.store.errors import BadFeatureRowError
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS
from shardctl.store.shardmap import ShardMap
from shardctl.store.validation import CopyRow
from shardctl.store.writer.commit import classify, commit_all, merge_all, raise_failures, rollback_all
from shardctl.store.writer.streaming import RoutedRow, ShardResult, ShardStream, open_stream


class _StopStreaming(Exception):
    """A shard failed while rows were streaming: stop, roll every shard back."""


class RoutedBatch:
    """The servers' open transactions of one attempt: each server's stream and connection, the logical shards
    it wrote (the fences to check), the rows it got, and the failures met so far, by server index."""

    def __init__(
        self,
        shard_map: ShardMap,
        feature_set: str,
        pools: list[ConnectionPool],
        executor: ThreadPoolExecutor,
        *,
        fresh_fast_path: bool,
        merge_rows: int,
    ):
        self.shard_map = shard_map
        self.feature_set = feature_set
        self.rows_per_shard: dict[int, int] = {}
        self._pools = pools
        self._executor = executor
        self._fresh_fast_path = fresh_fast_path
        self._merge_rows = merge_rows
        self._written: list[set[int]] = [set() for _ in range(shard_map.server_count)]
        self._streams: dict[int, ShardStream] = {}
        self._conns: dict[int, psycopg.Connection] = {}
        self._failures: dict[int, BaseException] = {}

    def stream(self, chunks: Iterable[tuple[list[CopyRow], list[int]]]) -> None:
        """Route each validated chunk and send its rows into their servers' COPYs at once, so the servers work
        while the next chunk is validated. A bad row (raised by ``chunks``) or a failing server stops the batch
        and rolls every server back: nothing of it is committed anywhere."""
        try:
            for chunk, chunk_hashes in chunks:
                for i, group in enumerate(self._route(chunk, chunk_hashes)):
                    if group:
                        self._send(i, group)
        except (BadFeatureRowError, _StopStreaming) as exc:
            for stream in self._streams.values():
                stream.abort()
            rollback_all(self._conns)
            if isinstance(exc, BadFeatureRowError):
                raise
            raise_failures(self._failures)

    def _route(self, chunk: list[CopyRow], chunk_hashes: list[int]) -> list[list[RoutedRow]]:
        """The chunk's rows by server index: an id's hash gives its logical shard, the epoch's placement the
        server holding it. Each row keeps its logical shard, which leads the table's key."""
        placement = self.shard_map.placement
        groups: list[list[RoutedRow]] = [[] for _ in range(self.shard_map.server_count)]
        for (eid, features, ts), h in zip(chunk, chunk_hashes, strict=True):
            shard = h % TOTAL_LOGICAL_SHARDS
            groups[placement[shard]].append((shard, eid, features, ts))
        return groups

    def _send(self, i: int, group: list[RoutedRow]) -> None:
        """Send ``group`` to server ``i``, opening its transaction and COPY with its first rows (they decide
        between the fresh-entity fast path and staging). A failure is recorded, classified, and stops the
        batch (``_StopStreaming``)."""
        self.rows_per_shard[i] = self.rows_per_shard.get(i, 0) + len(group)
        self._written[i].update(row[0] for row in group)
        try:
            stream = self._streams.get(i)
            if stream is None:
                self._conns[i] = self._pools[i].getconn()
                stream = self._streams[i] = open_stream(
                    self._conns[i],
                    i,
                    self.feature_set,
                    group,
                    fresh_fast_path=self._fresh_fast_path,
                    executor=self._executor,
                    sub_batch=self._merge_rows,
                )
            stream.send(group, self.feature_set)
        except Exception as exc:
            self._failures[i] = classify(i, self.shard_map.dsns[i], exc)
            raise _StopStreaming() from None

    def finish_and_check_fences(self) -> None:
        """End every server's COPY, then lock the per-logical-shard fence of each logical shard it wrote
        (``fence.check``): the lock, held until commit, is what makes a cutover's raise wait for this write,
        and a fence above this epoch refuses the batch. Failures are recorded for ``merge`` to report."""
        for i, stream in self._streams.items():
            try:
                stream.finish_copy()
                fence.check(stream.conn, self._written[i], self.shard_map.epoch)
            except Exception as exc:
                self._failures[i] = classify(i, self.shard_map.dsns[i], exc)

    def merge(self) -> dict[int, ShardResult]:
        """Merge the staged rows on every server in parallel, unless a server already failed; after any failure
        roll every server back and raise it (a fence first: the caller waits for the epoch and routes again)."""
        results: dict[int, ShardResult] = {}
        if not self._failures:
            results = merge_all(self._streams, self.feature_set, self.shard_map, self._failures, self._executor)
        if self._failures:
            rollback_all(self._conns)
            raise_failures(self._failures)
        return results

    def commit(self) -> None:
        """Commit server by server, only once every server merged (``commit_all`` names a partial commit)."""
        commit_all(self._conns, self.shard_map)

    def release(self) -> None:
        """Give every connection back to its server's pool, whatever the outcome (rolled back or committed)."""
        for i, conn in self._conns.items():
            self._pools[i].putconn(conn)
