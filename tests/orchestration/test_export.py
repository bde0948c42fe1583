"""`shardctl.store.export`: training's bulk read of a whole feature set from every shard."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from shardctl.process import wait_until
from shardctl.store import FeatureStore, export
from shardctl.store.errors import ShardUnavailableError
from shardctl.store.export import ExportedRow, export_feature_set
from shardctl.store.shardmap import ShardMap
from shardctl.store.writer import FeatureRow


@pytest.mark.req("PLAT.training")
def test_export_returns_every_row_of_the_feature_set_from_its_shard(settings) -> None:
    feature_set = f"export_{uuid.uuid4().hex[:8]}"
    ts = datetime(2026, 9, 1, tzinfo=UTC)
    rows = [FeatureRow(f"e-{i}", ts, {"x": i, "tier": "a" if i % 2 else "b"}) for i in range(500)]
    with FeatureStore.open(settings) as store:
        store.write(feature_set, rows)
        store.write("other_set_" + feature_set[-8:], rows[:10])
        exported = list(export_feature_set(store.shard_map, feature_set))
        shard_map = store.shard_map
    assert sorted(r.entity_id for r in exported) == sorted(r.entity_id for r in rows)
    assert all(r.shard == shard_map.shard_for(r.entity_id) for r in exported)
    by_id = {r.entity_id: r for r in exported}
    assert by_id["e-7"].features == {"x": 7, "tier": "a"}
    assert by_id["e-7"].event_ts == ts


def test_export_names_the_shard_it_cannot_read(settings) -> None:
    dead = "host=127.0.0.1 port=1 dbname=tessera user=tessera connect_timeout=1"
    shard_map = ShardMap(1, (settings.shard_dsns()[0], dead))
    with pytest.raises(ShardUnavailableError, match="shard 1"):
        list(export_feature_set(shard_map, "customer_activity_v1"))


@pytest.mark.req("JTBD-03.scale-columnar-frames")
def test_export_streams_in_bounded_chunks_and_a_consumer_that_stops_ends_every_copy(settings, monkeypatch) -> None:
    """Rows reach the consumer server by server in chunks a few ahead of it (memory bounded by the chunks, not by
    the feature set); closing the export early ends each server's COPY instead of leaving it streaming."""
    monkeypatch.setattr(export, "CHUNK_ROWS", 7)
    monkeypatch.setattr(export, "PREFETCH_CHUNKS", 1)
    feature_set = f"export_{uuid.uuid4().hex[:8]}"
    ts = datetime(2026, 9, 1, tzinfo=UTC)
    with FeatureStore.open(settings) as store:
        store.write(feature_set, [FeatureRow(f"e-{i:04d}", ts, {"x": i}) for i in range(300)])
        shard_map = store.shard_map
    exported = list(export_feature_set(shard_map, feature_set))
    assert len(exported) == 300
    shards = [r.shard for r in exported]
    assert shards == sorted(shards), "server by server"
    for shard in set(shards):
        ids = [r.entity_id for r in exported if r.shard == shard]
        assert ids == sorted(ids), "each server's rows ordered by entity id"

    made = []  # every row object the export builds, counted as it builds it
    monkeypatch.setattr(export, "ExportedRow", lambda *fields: made.append(1) or ExportedRow(*fields))
    partial = export_feature_set(shard_map, feature_set)
    first = [next(partial) for _ in range(10)]
    assert len({r.entity_id for r in first}) == 10
    time.sleep(1.0)  # time for the servers' producers to run as far ahead as they may
    # Each server: a chunk in its queue, one waiting to go in, one the consumer is reading: never the whole set.
    assert len(made) <= shard_map.server_count * (export.PREFETCH_CHUNKS + 2) * export.CHUNK_ROWS < 300
    partial.close()

    def copies_running() -> int:
        count = 0
        for dsn in shard_map.dsns:
            with psycopg.connect(dsn) as conn:
                count += conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' AND pid <> "
                    "pg_backend_pid()",
                    (
                        f"COPY (SELECT entity_id, event_ts, features::text FROM entity_features WHERE feature_set = "
                        f"'{feature_set}'%",
                    ),
                ).fetchone()[0]
        return count

    assert wait_until(lambda: copies_running() == 0, 10)
