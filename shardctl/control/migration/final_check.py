"""The cutover's final check, under the fence after the drain: does each target hold what its source holds of the
moved logical shards? ``verified`` compared every row before the fence; this is the last look, and writes to the
moving logical shards wait while it runs, so its cost under the fence must not grow with the rows moved.

For the feature table, whose every write leaves a row in its server's change log (``shardctl.store.changes``):

1. Before the fence (``FinalCheck.prepare``), per link: the source's rows per moved logical shard, counted in a
   snapshot held open, with that snapshot's xmin (every transaction it did not see has an id at least that);
   then, once the target has confirmed everything up to then (``wait_caught_up``), the target's counts in a
   snapshot held open too.
2. Under the fence (``FinalCheck.run``): the keys the change log names from that xmin on (the writes since step 1,
   seconds' worth), in the link's logical shards. A key it does not name was not written after the source's
   snapshot: it is the same row in both snapshots and now. Per logical shard, the counts less the named keys'
   rows in each held snapshot must agree (the rows nobody wrote since), and each named key must be the same row
   on both sides now (by hash, as ``verify`` compares).

So the work under the fence grows with the writes since step 1, not with the rows moved. What this cannot see: a
write straight into the target's copy of a key the source did not write between steps 1 and 2 (nothing writes
there but replication: the target does not own those logical shards yet).

Otherwise (a table without the change log, as in the engine's own tests; a baseline older than half the log's
retention, whose first rows may be pruned; more named keys than half the moved rows): every moved logical shard's
rows are counted on both sides under the fence, an index range scan each, all servers at once. That also proves
the shards equal, at a cost that grows with the rows moved (docs/benchmarks.md, "Resharding 5M rows under load").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql

from shardctl.control.migration import replication
from shardctl.control.migration.table import SHARD_COLUMN, MovedTable, count_rows
from shardctl.control.migration.verify import Key, common_columns, compare_connection, hashes_of_keys, keys_filter
from shardctl.store.changes import CHANGE_LOG_RETENTION_MINUTES, CHANGE_TABLE
from shardctl.store.hashing import logical_shard_for
from shardctl.store.schema import FEATURE_TABLE

# A baseline older than this may have lost its first changes to the log's pruning: count instead.
BASELINE_MAX_AGE_S = CHANGE_LOG_RETENTION_MINUTES * 60 / 2
CHANGED_KEYS_SQL = sql.SQL(
    "SELECT DISTINCT c.feature_set, e.entity_id FROM {} c CROSS JOIN LATERAL unnest(c.entity_ids) AS e(entity_id) "
    "WHERE c.txid >= %s::xid8"
).format(sql.Identifier(CHANGE_TABLE))


@dataclass(frozen=True)
class CheckResult:
    """Per link, the moved logical shards that differ (empty lists: the cutover may publish)."""

    mismatches: dict[replication.Link, list[int]]
    method: str  # "changes" (the change log since the held snapshots) or "counts" (every moved row counted)
    keys_compared: int = 0  # keys the change log named, compared row by row under the fence

    @property
    def clean(self) -> bool:
        return not any(self.mismatches.values())


@dataclass
class _Baseline:
    """One link's counts per logical shard, in snapshots still open on both servers."""

    link: replication.Link
    source: psycopg.Connection
    target: psycopg.Connection
    since_xid: str
    source_counts: dict[int, int]
    target_counts: dict[int, int]


class FinalCheck:
    """``prepare`` before the fence, ``run`` under it, ``close`` (or the ``with`` block's end) after."""

    def __init__(self, links: Sequence[replication.Link], table: MovedTable) -> None:
        self.links = list(links)
        self.table = table
        self._baselines: list[_Baseline] = []
        self._prepared_at: float | None = None

    def __enter__(self) -> FinalCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self) -> None:
        """Take each link's baseline (every link at once); a no-op where the change log cannot be used."""
        self.close()
        if not self._change_log_covers():
            return
        started = time.monotonic()  # the change log must still hold what was written from here on
        with ThreadPoolExecutor(max_workers=len(self.links), thread_name_prefix="final-check") as pool:
            futures = [pool.submit(self._baseline, link) for link in self.links]
        taken = [f.result() for f in futures if f.exception() is None]
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            for baseline in taken:
                _release(baseline)
            raise failed[0]
        self._baselines, self._prepared_at = taken, started

    def run(self) -> CheckResult:
        """The check itself (under the fence, after the drain)."""
        fresh = self._prepared_at is not None and time.monotonic() - self._prepared_at < BASELINE_MAX_AGE_S
        if fresh and self._baselines:
            with ThreadPoolExecutor(max_workers=len(self._baselines), thread_name_prefix="final-check") as pool:
                compared = list(pool.map(self._compare, self._baselines))
            found = [result for result in compared if result is not None]
            if len(found) == len(compared):
                return CheckResult(
                    {base.link: differing for base, (differing, _) in zip(self._baselines, found, strict=True)},
                    "changes",
                    sum(keys for _, keys in found),
                )
        return CheckResult(count_mismatches(self.links, self.table), "counts")

    def close(self) -> None:
        """End the held snapshots."""
        for baseline in self._baselines:
            _release(baseline)
        self._baselines = []
        self._prepared_at = None

    def _change_log_covers(self) -> bool:
        if self.table.name != FEATURE_TABLE or self.table.key != ("entity_id", "feature_set") or not self.links:
            return False
        for source in {link.source_dsn for link in self.links}:
            with psycopg.connect(source, autocommit=True, connect_timeout=5) as conn:
                if conn.execute("SELECT to_regclass(%s)", (CHANGE_TABLE,)).fetchone()[0] is None:
                    return False
        return True

    def _baseline(self, link: replication.Link) -> _Baseline:
        source = compare_connection(link.source_dsn)
        target = None
        try:
            source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            since = source.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()[0]
            source_counts = count_rows(source, self.table, link.logical_shards)
            replication.wait_caught_up(link)  # the target has applied all the source's snapshot holds
            target = compare_connection(link.target_dsn)
            target.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            target_counts = count_rows(target, self.table, link.logical_shards)
        except BaseException:
            source.close()
            if target is not None:
                target.close()
            raise
        return _Baseline(link, source, target, since, source_counts, target_counts)

    def _compare(self, base: _Baseline) -> tuple[list[int], int] | None:
        """The link's differing logical shards and the keys compared; None if the changes are too many to be
        cheaper than counting."""
        link, shards = base.link, set(base.link.logical_shards)
        with compare_connection(link.source_dsn) as source, compare_connection(link.target_dsn) as target:
            named = source.execute(CHANGED_KEYS_SQL, (base.since_xid,)).fetchall()
            keys: list[Key] = sorted(
                {
                    (shard, entity, feature_set)
                    for feature_set, entity in named
                    if (shard := logical_shard_for(entity)) in shards
                }
            )
            if len(keys) > sum(base.source_counts.values()) // 2:
                return None
            differing: set[int] = set()
            held_source: dict[int, int] = {}
            held_target: dict[int, int] = {}
            if keys:
                held_source = _rows_per_shard(base.source, self.table, keys)
                held_target = _rows_per_shard(base.target, self.table, keys)
                columns = common_columns(source, target, self.table)
                now_source = hashes_of_keys(source, self.table, columns, keys)
                now_target = hashes_of_keys(target, self.table, columns, keys)
                differing = {
                    k[0] for k in now_source.keys() | now_target.keys() if now_source.get(k) != now_target.get(k)
                }
        for shard in link.logical_shards:
            untouched_source = base.source_counts.get(shard, 0) - held_source.get(shard, 0)
            untouched_target = base.target_counts.get(shard, 0) - held_target.get(shard, 0)
            if untouched_source != untouched_target:
                differing.add(shard)
        return sorted(differing), len(keys)


def _rows_per_shard(conn: psycopg.Connection, table: MovedTable, keys: list[Key]) -> dict[int, int]:
    condition, params = keys_filter(table, keys)
    query = sql.SQL("SELECT {col}, count(*) FROM {table} WHERE {condition} GROUP BY 1").format(
        col=sql.Identifier(SHARD_COLUMN), table=table.ident, condition=condition
    )
    return dict(conn.execute(query, params).fetchall())


def _release(baseline: _Baseline) -> None:
    for conn in (baseline.source, baseline.target):
        conn.close()  # ends the read-only transaction: nothing to commit


def count_mismatches(links: Sequence[replication.Link], table: MovedTable) -> dict[replication.Link, list[int]]:
    """Per link, the moved logical shards whose row counts differ between source and target, every server counting
    at once on its own connection (writers wait for the slowest count, not the sum). Each count is an index range
    scan of the logical shard's rows (index-only once the target is vacuumed: the engine does that before the
    fence)."""

    def counted(dsn: str, shards: Sequence[int]) -> dict[int, int]:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return count_rows(conn, table, shards)

    with ThreadPoolExecutor(max_workers=2 * len(links), thread_name_prefix="final-check") as pool:
        counts = {
            link: (
                pool.submit(counted, link.source_dsn, link.logical_shards),
                pool.submit(counted, link.target_dsn, link.logical_shards),
            )
            for link in links
        }
        mismatches = {}
        for link, (source, target) in counts.items():
            on_source, on_target = source.result(), target.result()
            mismatches[link] = sorted(s for s in link.logical_shards if on_source.get(s, 0) != on_target.get(s, 0))
    return mismatches
