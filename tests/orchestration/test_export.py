"""`shardctl.store.export`: training's bulk read of a whole feature set from every shard."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shardctl.store import FeatureStore
from shardctl.store.errors import ShardUnavailableError
from shardctl.store.export import export_feature_set
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
