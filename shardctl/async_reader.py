"""Feature reads from an event loop: the same routing, query and result as ``FeatureReader``, on psycopg's
async connections, so a service's reads cost no thread hop (each one measured ~65-130 us of CPU here, and
a thread that must win the GIL back from a busy loop waits besides)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import psycopg
from psycopg.types.json import set_json_loads

from shardctl.errors import ShardUnavailableError
from shardctl.pools import AsyncShardPools
from shardctl.reader import READ_SQL, ReadResult, ShardOutcome, assemble_read, plan_read
from shardctl.shardmap import ShardMap, ShardMapWatcher


async def _configure_connection(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(msgspec.json.decode, conn)


class AsyncFeatureReader:
    """``await get_features(ids, feature_set)``: one query per shard, shards queried concurrently; a shard that
    cannot answer lands in ``ReadResult.failed`` (after at most ``acquire_timeout``) and the others return."""

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
        self._pools = AsyncShardPools(
            "tessera-async-reader",
            min_size=pool_min,
            max_size=pool_max,
            connect_timeout=connect_timeout,
            acquire_timeout=acquire_timeout,
            autocommit=True,
            options=f"-c statement_timeout={int(statement_timeout_ms)}",
            configure=_configure_connection,
            target_session_attrs=target_session_attrs,
        )

    @property
    def shard_map(self) -> ShardMap:
        return self._maps.current if isinstance(self._maps, ShardMapWatcher) else self._maps

    @property
    def pools_epoch(self) -> int | None:
        """The epoch the pools were built for (None before the first read)."""
        return self._pools.epoch

    async def get_features(self, entity_ids: Iterable[str] | str, feature_set: str) -> ReadResult:
        shard_map, groups = plan_read(self.shard_map, entity_ids, feature_set)
        pools = await self._pools.pools_for_async(shard_map)
        shards = list(groups)
        found = await asyncio.gather(*(self._try_read(pools[i], i, shard_map, feature_set, groups[i]) for i in shards))
        return assemble_read(shard_map, feature_set, groups, dict(zip(shards, found, strict=True)))

    @staticmethod
    async def _try_read(pool, shard: int, shard_map: ShardMap, feature_set: str, ids: list[str]) -> ShardOutcome:
        # As FeatureReader: one retry covers a pooled connection that died with a restarted shard.
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(READ_SQL, (feature_set, ids))
                    return await cursor.fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    return ShardUnavailableError(shard, shard_map.dsns[shard], exc)
            except Exception as exc:  # PoolTimeout: no connection within acquire_timeout
                return ShardUnavailableError(shard, shard_map.dsns[shard], exc)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._pools.aclose()
