"""Batched feature reads: group the ids by server (id -> logical shard -> server), one query per server naming
each id's logical shard (the key's leading column), servers queried concurrently.

A shard that cannot answer does not fail the read: its entities land in ``ReadResult.failed`` under a
``ShardUnavailableError`` naming the shard (the service answers 503 for those), while every other shard's
entities come back. Pools are small and connect with a short timeout, so a dead shard costs at most
``acquire_timeout`` seconds, and they are rebuilt when the shard map's epoch changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import set_json_loads

from shardctl.store.errors import BadEntityIdError, ShardUnavailableError
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS, entity_hash
from shardctl.store.pools import ShardPools
from shardctl.store.schema import FEATURE_TABLE
from shardctl.store.shardmap import ShardMap, ShardMapWatcher
from shardctl.store.validation import validate_feature_set

__all__ = ["BadEntityIdError", "FeatureReader", "FeatureRecord", "ReadResult", "ShardUnavailableError"]

# (logical_shard, entity_id) pairs from unnest: one index descent per id (measured: 2.1 ms p50 for 100 ids,
# docs/architecture/logical.md); `logical_shard = ANY AND entity_id = ANY` would descend per combination.
READ_SQL = (
    f"SELECT entity_id, features, event_ts, written_at, version FROM {FEATURE_TABLE} "
    "WHERE feature_set = %s AND (logical_shard, entity_id) IN (SELECT * FROM unnest(%s::integer[], %s::text[]))"
)
MAX_IDS_PER_READ = 10_000


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """One entity's stored features; ``version`` grows whenever the values change (serving cache keys use it)."""

    entity_id: str
    feature_set: str
    features: dict[str, Any]
    event_ts: datetime
    written_at: datetime
    version: int
    shard: int
    # (score, label) precomputed for exactly these features by the model version the read asked for; None when
    # the read asked for none or none is current (``shardctl/store/predictions.py``).
    prediction: tuple[float, str | None] | None = None


@dataclass
class ReadResult:
    """Found records by entity id, ids stored nowhere, and the shards that failed (their ids are in neither)."""

    records: dict[str, FeatureRecord] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    failed: dict[int, ShardUnavailableError] = field(default_factory=dict)
    failed_ids: dict[int, list[str]] = field(default_factory=dict)
    epoch: int = 0


def _configure_connection(conn: psycopg.Connection) -> None:
    set_json_loads(msgspec.json.decode, conn)


class ShardReaderBase:
    """What the sync and the async reader share: the shard map they follow and, per shard, a small read-only
    pool (autocommit, statement timeout, msgspec JSON decoding) that is rebuilt on a new epoch."""

    def __init__(
        self,
        shard_maps: ShardMap | ShardMapWatcher,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        connect_timeout: int = 2,
        acquire_timeout: float = 1.0,
        statement_timeout_ms: int = 5000,
        target_session_attrs: str | None = None,
    ):
        self._maps = shard_maps
        self._pools = self._make_pools(
            min_size=pool_min,
            max_size=pool_max,
            connect_timeout=connect_timeout,
            acquire_timeout=acquire_timeout,
            autocommit=True,
            options=f"-c statement_timeout={int(statement_timeout_ms)}",
            target_session_attrs=target_session_attrs,
        )

    def _make_pools(self, **options: Any) -> ShardPools:
        raise NotImplementedError

    @property
    def shard_map(self) -> ShardMap:
        return self._maps.current if isinstance(self._maps, ShardMapWatcher) else self._maps

    @property
    def pools_epoch(self) -> int | None:
        """The epoch the pools were built for (None before the first read)."""
        return self._pools.epoch


class FeatureReader(ShardReaderBase):
    """Reads feature records through per-shard pools that follow the current shard map."""

    def __init__(self, shard_maps: ShardMap | ShardMapWatcher, *, max_workers: int = 8, **pool_options: Any):
        super().__init__(shard_maps, **pool_options)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tessera-reader")

    def _make_pools(self, **options: Any) -> ShardPools:
        return ShardPools("tessera-reader", configure=_configure_connection, **options)

    def get_features(self, entity_ids: Iterable[str] | str, feature_set: str) -> ReadResult:
        """Stored features of ``entity_ids`` (one id or many) for ``feature_set``."""
        shard_map, groups, logical = plan_read(self.shard_map, entity_ids, feature_set)
        pools = self._pools.pools_for(shard_map)
        shards = list(groups)
        # The first shard runs on this thread: a single-shard read makes no thread hop.
        futures = {
            i: self._executor.submit(
                self._try_read, pools[i], i, shard_map, read_params(feature_set, groups[i], logical[i])
            )
            for i in shards[1:]
        }
        outcomes = {}
        if shards:
            first = shards[0]
            outcomes[first] = self._try_read(
                pools[first], first, shard_map, read_params(feature_set, groups[first], logical[first])
            )
        for i, future in futures.items():
            outcomes[i] = future.result()
        return assemble_read(shard_map, feature_set, groups, outcomes)

    @staticmethod
    def _try_read(pool, shard: int, shard_map: ShardMap, params: tuple):
        # One retry covers a pooled connection that died with a restarted shard; a dead shard fails both.
        # psycopg.OperationalError is what "shard unavailable" means: the connection failed or was lost, the
        # server is shutting down (AdminShutdown), the statement was cancelled, or no pooled connection came in
        # time (PoolTimeout, PoolClosed). Anything else (a bug, a missing table) reaches the caller as itself
        # instead of becoming a 503.
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    return conn.execute(READ_SQL, params).fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    return ShardUnavailableError(shard, shard_map.dsns[shard], exc)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._pools.close()

    def __enter__(self) -> FeatureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_read(
    shard_map: ShardMap, entity_ids: Iterable[str] | str, feature_set: str
) -> tuple[ShardMap, dict[int, list[str]], dict[int, list[int]]]:
    """Validate a read and group its ids by the server ``shard_map`` places them on (sync and async readers),
    with each id's logical shard beside it."""
    validate_feature_set(feature_set)
    ids = _checked_ids([entity_ids] if isinstance(entity_ids, str) else entity_ids)
    groups: dict[int, list[str]] = {}
    logical: dict[int, list[int]] = {}
    placement = shard_map.placement
    for eid in ids:
        shard = entity_hash(eid) % TOTAL_LOGICAL_SHARDS
        server = placement[shard]
        groups.setdefault(server, []).append(eid)
        logical.setdefault(server, []).append(shard)
    return shard_map, groups, logical


def read_params(feature_set: str, ids: list[str], logical: list[int]) -> tuple:
    """``READ_SQL``'s parameters for one server's ids."""
    return (feature_set, logical, ids)


ShardOutcome = list[tuple[Any, ...]] | ShardUnavailableError


def assemble_read(
    shard_map: ShardMap, feature_set: str, groups: dict[int, list[str]], outcomes: dict[int, ShardOutcome]
) -> ReadResult:
    """One ``ReadResult`` from each shard's rows or error."""
    result = ReadResult(epoch=shard_map.epoch)
    for i, outcome in outcomes.items():
        if isinstance(outcome, ShardUnavailableError):
            result.failed[i] = outcome
            result.failed_ids[i] = groups[i]
            continue
        for row in outcome:
            eid, features, event_ts, written_at, version = row[:5]
            prediction = (row[5], row[6]) if len(row) > 5 and row[5] is not None else None
            result.records[eid] = FeatureRecord(
                eid, feature_set, features, event_ts, written_at, version, i, prediction
            )
        result.missing.update(eid for eid in groups[i] if eid not in result.records)
    return result


def _checked_ids(entity_ids: Iterable[object]) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for position, eid in enumerate(entity_ids):
        if not isinstance(eid, str) or not eid or "\x00" in eid:
            raise BadEntityIdError(f"entity id #{position} must be a non-empty string, got {eid!r}")
        if eid not in seen:
            seen.add(eid)
            ids.append(eid)
    if len(ids) > MAX_IDS_PER_READ:
        raise BadEntityIdError(f"at most {MAX_IDS_PER_READ} entity ids per read, got {len(ids)}")
    return ids
