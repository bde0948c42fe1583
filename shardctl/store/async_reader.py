"""Feature reads from an event loop: the same routing, query and result as ``FeatureReader``, on psycopg's
async connections, so a service's reads cost no thread hop (each one measured ~65-130 us of CPU here, and
a thread that must win the GIL back from a busy loop waits besides)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import set_json_loads

from shardctl.store.errors import ShardUnavailableError
from shardctl.store.pools import AsyncShardPools
from shardctl.store.predictions import SCORED_READ_SQL
from shardctl.store.reader import (
    READ_SQL,
    ReadResult,
    ShardOutcome,
    ShardReaderBase,
    assemble_read,
    plan_read,
    read_params,
)
from shardctl.store.shardmap import ShardMap


async def _configure_connection(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(msgspec.json.decode, conn)


class AsyncFeatureReader(ShardReaderBase):
    """``await get_features(ids, feature_set)``: one query per shard, shards queried concurrently; a shard that
    cannot answer lands in ``ReadResult.failed`` (after at most ``acquire_timeout``) and the others return."""

    def _make_pools(self, **options: Any) -> AsyncShardPools:
        return AsyncShardPools("tessera-async-reader", configure=_configure_connection, **options)

    async def get_features(
        self, entity_ids: Iterable[str] | str, feature_set: str, model: tuple[str, int] | None = None
    ) -> ReadResult:
        """With ``model`` (name, registry version): the same read joined with the precomputed predictions
        (``shardctl/store/predictions.py``), in the same statement; a record's ``prediction`` is set only for one
        made by that model version from exactly the features read."""
        shard_map, groups, logical = plan_read(self.shard_map, entity_ids, feature_set)
        pools = await self._pools.pools_for_async(shard_map)
        shards = list(groups)
        query = READ_SQL if model is None else SCORED_READ_SQL
        prefix = () if model is None else tuple(model)
        found = await asyncio.gather(
            *(
                self._try_read(pools[i], i, shard_map, prefix + read_params(feature_set, groups[i], logical[i]), query)
                for i in shards
            )
        )
        return assemble_read(shard_map, feature_set, groups, dict(zip(shards, found, strict=True)))

    @staticmethod
    async def _try_read(pool, shard: int, shard_map: ShardMap, params: tuple, query: str = READ_SQL) -> ShardOutcome:
        # As FeatureReader: one retry covers a pooled connection that died with a restarted shard, and only
        # psycopg.OperationalError (PoolTimeout included) means the shard is unavailable.
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    return ShardUnavailableError(shard, shard_map.dsns[shard], exc)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._pools.aclose()
