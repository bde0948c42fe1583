"""Bulk export of one feature set from every server (training reads all of it back).

The reader answers point lookups by id; training needs every row. One COPY per shard streams the rows out
with no per-id routing, shards in parallel; a shard that cannot be read fails the export with the shard's
name (a model trained on part of the data must not be registered silently).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from shardctl.store.errors import ShardUnavailableError
from shardctl.store.schema import FEATURE_TABLE
from shardctl.store.shardmap import ShardMap
from shardctl.store.validation import validate_feature_set

# Only the logical shards the map places on the server: during a migration a target already holds copies of
# the moving logical shards, and a source still holds them until cleanup.
_EXPORT_SQL = sql.SQL(
    "COPY (SELECT entity_id, event_ts, features::text FROM {table} WHERE feature_set = {feature_set} "
    "AND logical_shard = ANY({shards}) ORDER BY entity_id) TO STDOUT"
)


@dataclass(frozen=True, slots=True)
class ExportedRow:
    entity_id: str
    event_ts: datetime
    features: dict
    shard: int


def _export_shard(dsn: str, shard: int, feature_set: str, logical_shards: list[int]) -> list[ExportedRow]:
    rows: list[ExportedRow] = []
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            query = _EXPORT_SQL.format(
                table=sql.Identifier(FEATURE_TABLE),
                feature_set=sql.Literal(feature_set),
                shards=sql.Literal(logical_shards),
            )
            with cur.copy(query) as copy:
                copy.set_types(["text", "timestamptz", "text"])
                for entity_id, event_ts, features in copy.rows():
                    rows.append(ExportedRow(entity_id, event_ts, json.loads(features), shard))
    except psycopg.OperationalError as exc:
        raise ShardUnavailableError(shard, dsn, exc) from exc
    return rows


def export_feature_set(shard_map: ShardMap, feature_set: str) -> Iterator[ExportedRow]:
    """Every stored row of ``feature_set``, server by server (each server's rows ordered by entity id)."""
    validate_feature_set(feature_set)
    with ThreadPoolExecutor(max_workers=max(1, shard_map.server_count)) as pool:
        futures = [
            pool.submit(_export_shard, dsn, i, feature_set, shard_map.logical_shards_of(i))
            for i, dsn in enumerate(shard_map.dsns)
        ]
        for future in futures:
            yield from future.result()
