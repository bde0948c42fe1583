"""Bulk export of one feature set from every server (training reads all of it back).

The reader answers point lookups by id; training needs every row. One COPY per shard streams the rows out
with no per-id routing, shards in parallel; a shard that cannot be read fails the export with the shard's
name (a model trained on part of the data must not be registered silently).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
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


# Each server's rows travel to the consumer in chunks, a few ahead of it: memory holds at most
# servers x (PREFETCH_CHUNKS + 2) x CHUNK_ROWS rows, whatever the feature set's size (at 500k entities the whole
# set as objects was about 0.8 GB of the training run's peak).
CHUNK_ROWS = 5_000
PREFETCH_CHUNKS = 4
_OFFER_WAIT_S = 0.1  # how often a producer held by a full queue looks whether the consumer left


class _ConsumerLeft(Exception):
    """The consumer stopped reading (an error, or it had enough): the producer ends its COPY."""


def _offer(out: queue.Queue, item: list[ExportedRow] | None, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _ConsumerLeft
        try:
            out.put(item, timeout=_OFFER_WAIT_S)
            return
        except queue.Full:
            continue


def _export_shard(
    dsn: str, shard: int, feature_set: str, logical_shards: list[int], out: queue.Queue, stop: threading.Event
) -> None:
    """Stream one server's rows into ``out`` in chunks, then ``None`` (also after an error: the consumer then asks
    the future, which raises it)."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            query = _EXPORT_SQL.format(
                table=sql.Identifier(FEATURE_TABLE),
                feature_set=sql.Literal(feature_set),
                shards=sql.Literal(logical_shards),
            )
            with cur.copy(query) as copy:
                copy.set_types(["text", "timestamptz", "text"])
                chunk: list[ExportedRow] = []
                for entity_id, event_ts, features in copy.rows():
                    chunk.append(ExportedRow(entity_id, event_ts, json.loads(features), shard))
                    if len(chunk) >= CHUNK_ROWS:
                        _offer(out, chunk, stop)
                        chunk = []
            if chunk:
                _offer(out, chunk, stop)
    except _ConsumerLeft:
        return
    except psycopg.OperationalError as exc:
        raise ShardUnavailableError(shard, dsn, exc) from exc
    finally:
        with contextlib.suppress(_ConsumerLeft):
            _offer(out, None, stop)


def export_feature_set(shard_map: ShardMap, feature_set: str) -> Iterator[ExportedRow]:
    """Every stored row of ``feature_set``, server by server (each server's rows ordered by entity id).

    Every server is read at once, each at most ``PREFETCH_CHUNKS`` chunks ahead of the consumer, so memory stays
    bounded; a consumer that stops early ends every server's COPY."""
    validate_feature_set(feature_set)
    queues: list[queue.Queue] = [queue.Queue(maxsize=PREFETCH_CHUNKS) for _ in shard_map.dsns]
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, shard_map.server_count)) as pool:
        futures = [
            pool.submit(_export_shard, dsn, i, feature_set, shard_map.logical_shards_of(i), queues[i], stop)
            for i, dsn in enumerate(shard_map.dsns)
        ]
        try:
            for server, rows in enumerate(queues):
                while (chunk := rows.get()) is not None:
                    yield from chunk
                futures[server].result()  # the server's error, if it stopped on one
        finally:
            stop.set()
