"""One server's side of a batch write: its open transaction and the COPY that streams rows into it (straight
into the table for fresh entities, else into a staging table merged in sub-batches).
Rows arrive as ``(logical_shard, entity_id, features, event_ts)``: the logical shard leads the key.

Nothing here commits: ``shardctl.store.writer.commit`` decides, across all shards.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import psycopg

from shardctl.errors import first_line
from shardctl.store.changes import LOG_BATCH_SQL, MARK_LOGGED_SQL
from shardctl.store.errors import describe_dsn
from shardctl.store.schema import FEATURE_TABLE

log = logging.getLogger(__name__)

RoutedRow = tuple[int, str, bytes, datetime]  # logical shard, entity id, JSON-encoded features, event time

_PROBE_KEYS = 64
_MERGE_SQL = f"""
INSERT INTO {FEATURE_TABLE} AS t (logical_shard, entity_id, feature_set, features, event_ts)
SELECT s.logical_shard, s.entity_id, %(feature_set)s, s.features, s.event_ts FROM tessera_stage s
ON CONFLICT (logical_shard, entity_id, feature_set) DO UPDATE
   SET features = excluded.features,
       event_ts = excluded.event_ts,
       written_at = now(),
       version = t.version + (t.features IS DISTINCT FROM excluded.features)::int
 WHERE excluded.event_ts >= t.event_ts
   AND (t.features, t.event_ts) IS DISTINCT FROM (excluded.features, excluded.event_ts)
"""
# Rows inserted so far by this transaction (Postgres' own per-transaction counter): read before and after the
# merge, it splits the merge's row count into inserts and updates without a RETURNING pass over every row.
_XACT_INSERTED_SQL = f"SELECT pg_stat_get_xact_tuples_inserted('{FEATURE_TABLE}'::regclass)"
_PROBE_SQL = (
    f"SELECT EXISTS (SELECT 1 FROM {FEATURE_TABLE} WHERE feature_set = %s "
    "AND (logical_shard, entity_id) IN (SELECT * FROM unnest(%s::integer[], %s::text[])))"
)
_COPY_TABLE_SQL = (
    f"COPY {FEATURE_TABLE} (logical_shard, entity_id, feature_set, features, event_ts) FROM STDIN (FORMAT BINARY)"
)
_COPY_STAGE_SQL = "COPY tessera_stage (logical_shard, entity_id, features, event_ts) FROM STDIN (FORMAT BINARY)"
_STAGE_DDL = (
    "CREATE TEMP TABLE tessera_stage (logical_shard integer, entity_id text, features jsonb, event_ts timestamptz) "
    "ON COMMIT DROP"
)


class _Aborted(Exception):
    """Passed to an open COPY to make it fail (Postgres then discards what it received)."""


class ShardStream:
    """One shard's open transaction while the batch streams in.

    Fast path: one COPY straight into the table, kept open for the whole batch. Merge path: rows collect
    into sub-batches; each is copied into the staging table and merged on a pool thread while this thread
    validates the next one, so the client's validation overlaps the server's merge.
    """

    def __init__(self, shard: int, conn: psycopg.Connection, fast: bool, executor: ThreadPoolExecutor, sub_batch: int):
        self.shard = shard
        self.conn = conn
        self.where = describe_dsn(conn.info.dsn)  # host:port/db for the logs, never a password
        self.fast = fast
        self.rows: list[RoutedRow] = []  # fast path: kept to stage them if it fails
        self._executor = executor
        self._sub_batch = sub_batch
        self._pending: list[RoutedRow] = []
        self._ids: list[str] = []  # every id streamed here, logged in the change log before commit
        self._feature_set = ""
        self._merging: Future | None = None
        self._staged = False
        self._inserted = 0
        self._updated = 0
        self._copying = contextlib.ExitStack()
        if fast:
            cursor = self._copying.enter_context(self.conn.cursor())
            self._copy = self._copying.enter_context(cursor.copy(_COPY_TABLE_SQL))
            self._copy.set_types(["int4", "text", "text", "jsonb", "timestamptz"])

    def send(self, rows: list[RoutedRow], feature_set: str) -> None:
        self._feature_set = feature_set
        self._ids.extend(row[1] for row in rows)
        if self.fast:
            self.rows.extend(rows)
            write = self._copy.write_row
            for shard, eid, features, ts in rows:
                write((shard, eid, feature_set, features, ts))
            return
        self._pending.extend(rows)
        if len(self._pending) >= self._sub_batch:
            self._wait_for_merge()
            self._stage_pending()
            self._merging = self._executor.submit(self._merge_staged, feature_set)

    def _stage_pending(self) -> None:
        rows, self._pending = self._pending, []
        if not rows:
            return
        with self.conn.cursor() as cursor, cursor.copy(_COPY_STAGE_SQL) as copy:
            copy.set_types(["int4", "text", "jsonb", "timestamptz"])
            for row in rows:
                copy.write_row(row)
        self._staged = True

    def _merge_staged(self, feature_set: str) -> None:
        with self.conn.cursor() as cur:
            inserted_before = cur.execute(_XACT_INSERTED_SQL).fetchone()[0]
            cur.execute(_MERGE_SQL, {"feature_set": feature_set})
            affected = cur.rowcount
            inserted = cur.execute(_XACT_INSERTED_SQL).fetchone()[0] - inserted_before
            cur.execute("TRUNCATE tessera_stage")
        self._inserted += inserted
        self._updated += affected - inserted
        self._staged = False

    def _wait_for_merge(self) -> None:
        if self._merging is not None:
            merging, self._merging = self._merging, None
            merging.result()

    def abort(self) -> None:
        """Make the open COPY fail, or wait out the running merge, so the rollback can follow. It runs while the
        batch's own error is on its way up: a failure here is logged, never raised over that error."""
        try:
            if self.fast:
                self._copying.__exit__(_Aborted, _Aborted(), None)
            else:
                self._wait_for_merge()  # the connection must be idle before the rollback
        except psycopg.Error as exc:  # the connection broke, or the merge had failed on the server
            log.warning("shard %s (%s): aborting its write failed: %s", self.shard, self.where, first_line(exc))
        except Exception:  # a merge that failed in our code: a bug, logged with its traceback
            log.exception("shard %s (%s): aborting its write failed", self.shard, self.where)

    def finish_copy(self) -> None:
        """End the COPY. A stored key met on the fast path rolls back to the savepoint and stages instead."""
        if self.fast:
            try:
                self._copying.close()
                self._log_changes()
                return
            except psycopg.errors.UniqueViolation:
                self.conn.execute("ROLLBACK TO SAVEPOINT tessera_fresh")
                self.fast = False
                self.conn.execute(_STAGE_DDL)
                self._pending, self.rows = self.rows, []
        self._wait_for_merge()
        self._stage_pending()
        self._log_changes()

    def _log_changes(self) -> None:
        """One change-log row for the batch's ids on this shard, in the batch's transaction (see
        ``shardctl.store.changes``: cheaper than a trigger for bulk writes)."""
        if self._ids:
            self.conn.execute(LOG_BATCH_SQL, (self._feature_set, self._ids))

    def merge(self, feature_set: str) -> ShardResult:
        """The last sub-batch's merge (all shards run theirs in parallel), then the counts of all."""
        self._wait_for_merge()
        if self._staged:
            self._merge_staged(feature_set)
        self.conn.execute("DROP TABLE tessera_stage")
        return ShardResult(self._inserted, self._updated, False)


@dataclass
class ShardResult:
    """One shard's merge counts; ``fast_path`` when its rows went straight into the table."""

    inserted: int
    updated: int
    fast_path: bool


def open_stream(
    conn: psycopg.Connection,
    shard: int,
    feature_set: str,
    first_rows: list[RoutedRow],
    *,
    fresh_fast_path: bool,
    executor: ThreadPoolExecutor,
    sub_batch: int,
) -> ShardStream:
    """Open the shard's transaction: a COPY into the table (no stored key among the probed ones: fresh
    entities, under a savepoint) or into a temporary staging table."""
    conn.execute(MARK_LOGGED_SQL)  # this transaction logs its own changes: the row trigger stays off
    fast = fresh_fast_path and not _any_stored(conn, feature_set, first_rows)
    if fast:
        conn.execute("SAVEPOINT tessera_fresh")
    else:
        conn.execute(_STAGE_DDL)
    return ShardStream(shard, conn, fast, executor, sub_batch)


def _any_stored(conn: psycopg.Connection, feature_set: str, rows: list[RoutedRow]) -> bool:
    step = max(1, len(rows) // _PROBE_KEYS)
    sample = [rows[i] for i in range(0, len(rows), step)][:_PROBE_KEYS]
    shards, ids = [row[0] for row in sample], [row[1] for row in sample]
    return bool(conn.execute(_PROBE_SQL, (feature_set, shards, ids)).fetchone()[0])
