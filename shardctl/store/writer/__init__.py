"""Bulk writes of feature rows: validate, route by shard, binary COPY + one merge per shard.

The batch is all-or-nothing as far as Postgres can make it without two-phase commit:

1. Rows are validated in chunks (a bad row raises ``BadFeatureRowError`` naming its position and id) and
   each valid chunk is routed and streamed at once into every shard's open transaction: fence check (the
   write's shard-map epoch), then binary ``COPY`` into a temporary staging table (or, for fresh entities,
   straight into the table under a savepoint). A bad row anywhere aborts every shard's COPY and rolls
   every shard back: nothing of the batch is ever committed anywhere. Validation completes before any
   commit, and overlapping it with the COPY keeps the writer near raw ``COPY`` speed.
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
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import PoolTimeout

from shardctl.store.errors import BadFeatureRowError, FeatureWriteError, PartialCommitError, ShardUnavailableError
from shardctl.store.pools import ShardPools
from shardctl.store.retry import failover_in, is_multi_host
from shardctl.store.schema import FEATURE_TABLE
from shardctl.store.shardmap import ShardMap, ShardMapWatcher, StaleShardMapError, check_fence

__all__ = [
    "BadFeatureRowError",
    "FeatureRow",
    "FeatureWriteError",
    "FeatureWriter",
    "PartialCommitError",
    "StaleShardMapError",
    "WriteReport",
]

log = logging.getLogger(__name__)

FeatureValue = float | int | str | bool | None
_ALLOWED_VALUE_TYPES = frozenset({float, int, str, bool, type(None)})
_MAX_FEATURE_SET = 63
_PROBE_KEYS = 64
_CHUNK_ROWS = 1000  # small chunks keep the shards fed while the next chunk is validated
_MERGE_ROWS = 50_000  # a shard merges staged rows in sub-batches this size, overlapping the next validation
_STR_ONLY = frozenset({str})
_ENCODE = msgspec.json.encode

_MERGE_SQL = f"""
INSERT INTO {FEATURE_TABLE} AS t (entity_id, feature_set, features, event_ts)
SELECT s.entity_id, %(feature_set)s, s.features, s.event_ts FROM tessera_stage s
ON CONFLICT (entity_id, feature_set) DO UPDATE
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
_PROBE_SQL = f"SELECT EXISTS (SELECT 1 FROM {FEATURE_TABLE} WHERE feature_set = %s AND entity_id = ANY(%s))"
_COPY_TABLE_SQL = f"COPY {FEATURE_TABLE} (entity_id, feature_set, features, event_ts) FROM STDIN (FORMAT BINARY)"
_COPY_STAGE_SQL = "COPY tessera_stage (entity_id, features, event_ts) FROM STDIN (FORMAT BINARY)"
_STAGE_DDL = "CREATE TEMP TABLE tessera_stage (entity_id text, features jsonb, event_ts timestamptz) ON COMMIT DROP"


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One entity's feature values at ``event_ts`` (timezone-aware) for one feature set."""

    entity_id: str
    event_ts: datetime
    features: Mapping[str, FeatureValue]


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


class _StopStreaming(Exception):
    """A shard failed while rows were streaming: stop, roll every shard back."""


class _Aborted(Exception):
    """Passed to an open COPY to make it fail (Postgres then discards what it received)."""


class _ShardStream:
    """One shard's open transaction while the batch streams in.

    Fast path: one COPY straight into the table, kept open for the whole batch. Merge path: rows collect
    into sub-batches; each is copied into the staging table and merged on a pool thread while this thread
    validates the next one, so the client's validation overlaps the server's merge.
    """

    def __init__(self, shard: int, conn: psycopg.Connection, fast: bool, executor: ThreadPoolExecutor, sub_batch: int):
        self.shard = shard
        self.conn = conn
        self.fast = fast
        self.rows: list[tuple[str, bytes, datetime]] = []  # fast path: kept to stage them if it fails
        self._executor = executor
        self._sub_batch = sub_batch
        self._pending: list[tuple[str, bytes, datetime]] = []
        self._merging: Future | None = None
        self._staged = False
        self._inserted = 0
        self._updated = 0
        self._copying = contextlib.ExitStack()
        if fast:
            cursor = self._copying.enter_context(self.conn.cursor())
            self._copy = self._copying.enter_context(cursor.copy(_COPY_TABLE_SQL))
            self._copy.set_types(["text", "text", "jsonb", "timestamptz"])

    def send(self, rows: list[tuple[str, bytes, datetime]], feature_set: str) -> None:
        if self.fast:
            self.rows.extend(rows)
            write = self._copy.write_row
            for eid, features, ts in rows:
                write((eid, feature_set, features, ts))
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
            copy.set_types(["text", "jsonb", "timestamptz"])
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
        with contextlib.suppress(Exception):
            if self.fast:
                self._copying.__exit__(_Aborted, _Aborted(), None)
            else:
                self._wait_for_merge()  # the connection must be idle before the rollback

    def finish_copy(self) -> None:
        """End the COPY. A stored key met on the fast path rolls back to the savepoint and stages instead."""
        if self.fast:
            try:
                self._copying.close()
                return
            except psycopg.errors.UniqueViolation:
                self.conn.execute("ROLLBACK TO SAVEPOINT tessera_fresh")
                self.fast = False
                self.conn.execute(_STAGE_DDL)
                self._pending, self.rows = self.rows, []
        self._wait_for_merge()
        self._stage_pending()

    def merge(self, feature_set: str) -> _ShardResult:
        """The last sub-batch's merge (all shards run theirs in parallel), then the counts of all."""
        self._wait_for_merge()
        if self._staged:
            self._merge_staged(feature_set)
        self.conn.execute("DROP TABLE tessera_stage")
        return _ShardResult(self._inserted, self._updated, False)


@dataclass
class _ShardResult:
    inserted: int
    updated: int
    fast_path: bool


def validate_feature_set(feature_set: object) -> str:
    if not isinstance(feature_set, str) or not feature_set or len(feature_set) > _MAX_FEATURE_SET:
        raise ValueError(f"feature_set must be a non-empty string of at most {_MAX_FEATURE_SET} characters")
    if not feature_set.isprintable():
        raise ValueError(f"feature_set {feature_set!r} has non-printable characters")
    return feature_set


def validate_rows(rows: Iterable[FeatureRow]) -> tuple[list[tuple[str, bytes, datetime]], list[int]]:
    """Check every row; returns the rows as COPY tuples (features already JSON-encoded) and their hashes.

    Raises ``BadFeatureRowError`` for the first bad row (its position and entity id in the message).
    """
    return _Validator().take(iter(rows), None)


class _Validator:
    """Validates a batch chunk by chunk, remembering positions and ids across chunks (duplicates are bad).

    The common case runs on C-level checks (type sets, msgspec encoding); a row that trips one of them goes
    through ``_explain_bad_features``, which finds the exact problem or clears the row.
    """

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.index = 0

    def take(
        self, rows: Iterator[FeatureRow], limit: int | None
    ) -> tuple[list[tuple[str, bytes, datetime]], list[int]]:
        """Validate up to ``limit`` more rows (all with None); returns their COPY tuples and hashes."""
        out: list[tuple[str, bytes, datetime]] = []
        hashes: list[int] = []
        seen = self.seen
        allowed, str_only, encode, md5, from_bytes = (
            _ALLOWED_VALUE_TYPES,
            _STR_ONLY,
            _ENCODE,
            hashlib.md5,
            int.from_bytes,
        )
        for index, row in enumerate(itertools.islice(rows, limit), start=self.index):
            if type(row) is not FeatureRow:
                got = type(row).__name__
                raise BadFeatureRowError(index, getattr(row, "entity_id", None), f"expected FeatureRow, got {got}")
            eid = row.entity_id
            if type(eid) is not str:
                raise BadFeatureRowError(index, eid, f"entity_id must be a string, got {type(eid).__name__}")
            if not eid or eid.isspace() or "\x00" in eid:
                raise BadFeatureRowError(index, eid, "entity_id must be a non-empty string without NUL characters")
            ts = row.event_ts
            if type(ts) is not datetime or ts.tzinfo is None or ts.utcoffset() is None:
                raise BadFeatureRowError(index, eid, f"event_ts must be a timezone-aware datetime, got {ts!r}")
            features = row.features
            if type(features) is not dict:
                if not isinstance(features, Mapping):
                    raise BadFeatureRowError(index, eid, f"features must be a mapping, got {type(features).__name__}")
                features = dict(features)
            values = list(features.values())
            if (
                not allowed.issuperset(map(type, values))
                or not str_only.issuperset(map(type, features))
                or "" in features
            ):
                _explain_bad_features(index, eid, features)
            try:
                encoded = encode(features)
                key = eid.encode()
            except UnicodeEncodeError as exc:
                raise BadFeatureRowError(index, eid, f"not valid Unicode: {exc}") from None
            # msgspec writes NaN/inf as null: more nulls than None values means a non-finite float (or the text
            # "null" inside a string: the slow check tells them apart). NUL in a string cannot be stored in jsonb.
            if encoded.count(b"null") != values.count(None) or b"\\u0000" in encoded:
                _explain_bad_features(index, eid, features)
            if eid in seen:
                raise BadFeatureRowError(index, eid, f"entity_id repeats row #{seen[eid]} of the same batch")
            seen[eid] = index
            out.append((eid, encoded, ts))
            hashes.append(from_bytes(md5(key).digest()[:8], "big"))  # shardctl.store.hashing.entity_hash, inlined
        self.index += len(out)
        return out, hashes


def _explain_bad_features(index: int, eid: str, features: Mapping) -> None:
    """Raise the precise error for a row the fast checks flagged; return if it is fine after all."""
    for key, value in features.items():
        if type(key) is not str or not key:
            raise BadFeatureRowError(index, eid, f"feature names must be non-empty strings, got {key!r}")
        kind = type(value)
        if kind not in _ALLOWED_VALUE_TYPES:
            raise BadFeatureRowError(
                index, eid, f"feature {key!r} has type {kind.__name__}; allowed: float, int, str, bool, None"
            )
        if (kind is float and not math.isfinite(value)) or (kind is str and "\x00" in value):
            raise BadFeatureRowError(index, eid, f"feature {key!r} has an unstorable value {value!r}")


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
    ):
        if chunk_rows < 1 or merge_rows < 1:
            raise ValueError(f"chunk_rows and merge_rows must be >= 1, got {chunk_rows}, {merge_rows}")
        self._maps = shard_maps
        self.failover_deadline = failover_deadline
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

    def _refresh(self) -> ShardMap | None:
        if isinstance(self._maps, ShardMapWatcher):
            return self._maps.refresh()
        return None

    def write(self, feature_set: str, rows: Iterable[FeatureRow]) -> WriteReport:
        """Upsert ``rows`` for ``feature_set``; see the module docstring for the guarantees."""
        started = time.perf_counter()
        validate_feature_set(feature_set)
        with _cyclic_gc_paused():
            return self._write(feature_set, rows, started)

    def _write(self, feature_set: str, rows: Iterable[FeatureRow], started: float) -> WriteReport:
        validator = _Validator()
        source = iter(rows)
        prepared: list[tuple[str, bytes, datetime]] = []
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
                if not _failover_retryable(exc, shard_map) or time.perf_counter() - started > self.failover_deadline:
                    raise
                log.info("%s; retrying after a failover", exc)
                self._pools.close()
                time.sleep(0.2)
                retries += 1
            except StaleShardMapError as exc:
                refreshed = self._refresh()
                if retries or refreshed is None or refreshed.epoch <= shard_map.epoch:
                    raise
                log.info("%s; retrying on epoch %s", exc, refreshed.epoch)
                shard_map, retries = refreshed, retries + 1
        report.retries = retries
        report.seconds = time.perf_counter() - started
        return report

    def _chunks(self, validator: _Validator, source: Iterator[FeatureRow], prepared: list, hashes: list):
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
        n = shard_map.total_shards
        report = WriteReport(feature_set, shard_map.epoch, {})
        pools = self._pools.pools_for(shard_map)
        streams: dict[int, _ShardStream] = {}
        conns: dict[int, psycopg.Connection] = {}
        failures: dict[int, BaseException] = {}
        try:
            try:
                for chunk, chunk_hashes in self._chunks(validator, source, prepared, hashes):
                    groups: list[list] = [[] for _ in range(n)]
                    for row, h in zip(chunk, chunk_hashes, strict=True):
                        groups[h % n].append(row)
                    for i, group in enumerate(groups):
                        if not group:
                            continue
                        report.rows_per_shard[i] = report.rows_per_shard.get(i, 0) + len(group)
                        try:
                            stream = streams.get(i)
                            if stream is None:
                                conns[i] = pools[i].getconn()
                                stream = streams[i] = self._open_stream(
                                    conns[i], i, shard_map.epoch, feature_set, group
                                )
                            stream.send(group, feature_set)
                        except Exception as exc:
                            failures[i] = _classify(i, shard_map.dsns[i], exc)
                            raise _StopStreaming() from None
            except (BadFeatureRowError, _StopStreaming) as exc:
                for stream in streams.values():
                    stream.abort()
                self._rollback_all(conns)
                if isinstance(exc, BadFeatureRowError):
                    raise
                self._raise_failures(failures)
            for i, stream in streams.items():
                try:
                    stream.finish_copy()
                except Exception as exc:
                    failures[i] = _classify(i, shard_map.dsns[i], exc)
            results = self._merge_all(streams, feature_set, shard_map, failures) if not failures else {}
            if failures:
                self._rollback_all(conns)
                self._raise_failures(failures)
            self._commit_all(conns, shard_map)
        finally:
            for i, conn in conns.items():
                pools[i].putconn(conn)
        for i, result in sorted(results.items()):
            report.inserted += result.inserted
            report.updated += result.updated
            report.unchanged += report.rows_per_shard[i] - result.inserted - result.updated
            if result.fast_path:
                report.fast_path_shards.append(i)
        report.rows_per_shard = dict(sorted(report.rows_per_shard.items()))
        return report

    def _open_stream(
        self, conn: psycopg.Connection, shard: int, epoch: int, feature_set: str, first_rows: list
    ) -> _ShardStream:
        """Open the shard's transaction: fence check, then a COPY into the table (no stored key among the
        probed ones: fresh entities, under a savepoint) or into a temporary staging table."""
        check_fence(conn, shard, epoch)
        fast = self.fresh_fast_path and not self._any_stored(conn, feature_set, first_rows)
        if fast:
            conn.execute("SAVEPOINT tessera_fresh")
        else:
            conn.execute(_STAGE_DDL)
        return _ShardStream(shard, conn, fast, self._pool_executor(), self.merge_rows)

    def _pool_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tessera-writer")
        return self._executor

    def _merge_all(
        self, streams: dict[int, _ShardStream], feature_set: str, shard_map: ShardMap, failures: dict
    ) -> dict[int, _ShardResult]:
        """Merge on every shard that staged rows, in parallel (the work is in the Postgres backends)."""
        results = {i: _ShardResult(len(s.rows), 0, True) for i, s in streams.items() if s.fast}
        pending = {i: s for i, s in streams.items() if not s.fast}
        if len(pending) > 1:
            futures = {i: self._pool_executor().submit(s.merge, feature_set) for i, s in pending.items()}
            outcomes = {}
            for i, future in futures.items():
                try:
                    outcomes[i] = future.result()
                except Exception as exc:
                    failures[i] = _classify(i, shard_map.dsns[i], exc)
            results.update(outcomes)
        else:
            for i, stream in pending.items():
                try:
                    results[i] = stream.merge(feature_set)
                except Exception as exc:
                    failures[i] = _classify(i, shard_map.dsns[i], exc)
        return results

    @staticmethod
    def _raise_failures(failures: dict[int, BaseException]) -> None:
        stale = [f for f in failures.values() if isinstance(f, StaleShardMapError)]
        if stale:
            raise stale[0]
        if len(failures) == 1:
            only = next(iter(failures.values()))
            if isinstance(only, ShardUnavailableError):
                raise only
        raise FeatureWriteError(
            "batch not written (rolled back on every shard): "
            + "; ".join(f"shard {i}: {exc}" for i, exc in sorted(failures.items())),
            failures,
        )

    @staticmethod
    def _any_stored(conn: psycopg.Connection, feature_set: str, rows) -> bool:
        step = max(1, len(rows) // _PROBE_KEYS)
        sample = [rows[i][0] for i in range(0, len(rows), step)][:_PROBE_KEYS]
        return bool(conn.execute(_PROBE_SQL, (feature_set, sample)).fetchone()[0])

    @staticmethod
    def _rollback_all(conns: dict[int, psycopg.Connection]) -> None:
        for conn in conns.values():
            # A dead connection has nothing to roll back: the server aborts its transaction.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()

    @staticmethod
    def _commit_all(conns: dict[int, psycopg.Connection], shard_map: ShardMap) -> None:
        committed: list[int] = []
        failures: dict[int, BaseException] = {}
        for i, conn in conns.items():
            if failures:
                conn.rollback()
                failures[i] = FeatureWriteError("not committed: an earlier shard failed to commit")
                continue
            try:
                conn.commit()
                committed.append(i)
            except psycopg.Error as exc:
                failures[i] = ShardUnavailableError(i, shard_map.dsns[i], exc)
        if failures and committed:
            raise PartialCommitError(committed, failures)
        if failures:
            raise FeatureWriteError(f"batch not written: {'; '.join(map(str, failures.values()))}", failures)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pools.close()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def _failover_retryable(exc: ShardUnavailableError | FeatureWriteError, shard_map: ShardMap) -> bool:
    """A failover on an HA shard (multi-host DSN): worth re-running the batch. A single server that is
    down stays down for now, so its error goes straight to the caller."""
    shards = set(getattr(exc, "failures", None) or ())
    if isinstance(exc, ShardUnavailableError):
        shards.add(exc.shard)
    return failover_in(exc) and any(is_multi_host(shard_map.dsns[i]) for i in shards if i < len(shard_map.dsns))


def _classify(shard: int, dsn: str, exc: BaseException) -> BaseException:
    if isinstance(exc, StaleShardMapError | ShardUnavailableError):
        return exc
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return ShardUnavailableError(shard, dsn, exc)
    return exc
