"""The reader on the session stack: batched gets across shards, missing ids, clear errors on bad input."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shardctl.store import FeatureStore
from shardctl.store.async_reader import AsyncFeatureReader
from shardctl.store.errors import ShardUnavailableError
from shardctl.store.hashing import shard_for
from shardctl.store.reader import BadEntityIdError, FeatureReader
from shardctl.store.shardmap import ShardMap
from tests.store.conftest import T0, make_rows


@pytest.mark.req("JTBD-03.reader")
def test_batch_read_returns_each_record_from_its_shard_and_reports_missing_ids(
    feature_store: FeatureStore, feature_set: str
) -> None:
    feature_store.write(feature_set, make_rows(120))
    wanted = [f"e{i}" for i in range(0, 120, 3)] + ["absent-1", "absent-2"]
    result = feature_store.get_features(wanted, feature_set)
    assert result.failed == {}
    assert result.missing == {"absent-1", "absent-2"}
    assert set(result.records) == set(wanted) - result.missing
    record = result.records["e9"]
    assert record.features == {"spend": 13.5, "visits": 9, "tier": "t0", "active": False}
    assert record.event_ts == T0.replace(second=9)
    assert record.version == 1
    assert record.feature_set == feature_set
    assert {r.shard for r in result.records.values()} == {0, 1}
    assert all(r.shard == shard_for(r.entity_id, 2) for r in result.records.values())


@pytest.mark.req("JTBD-03.reader")
def test_single_id_read_and_other_feature_sets_stay_apart(feature_store: FeatureStore, feature_set: str) -> None:
    feature_store.write(feature_set, make_rows(3))
    one = feature_store.get_features("e1", feature_set)
    assert list(one.records) == ["e1"]
    assert feature_store.get_features("e1", feature_set + "_other").missing == {"e1"}
    assert feature_store.get_features([], feature_set).records == {}


@pytest.mark.req("JTBD-03.reader")
@pytest.mark.parametrize("bad", [[""], [None], [42], ["ok", ""]])
def test_bad_entity_ids_are_refused_with_a_clear_error(feature_store: FeatureStore, bad: list) -> None:
    with pytest.raises(BadEntityIdError, match="non-empty string"):
        feature_store.get_features(bad, "fs")


@pytest.mark.req("JTBD-03.reader")
def test_only_an_unreachable_shard_is_unavailable_a_broken_query_surfaces(settings, feature_set: str) -> None:
    """A shard that cannot be reached lands in ``failed`` (the service answers 503 for it); a shard that answers
    with an error of ours (here: a database without the feature table, the catalog) raises, sync and async."""
    unreachable = "host=127.0.0.1 port=1 dbname=tessera user=nobody connect_timeout=1"
    with FeatureReader(ShardMap(1, (unreachable,)), acquire_timeout=1.0) as reader:
        result = reader.get_features(["e1"], feature_set)
    assert list(result.failed) == [0]
    assert isinstance(result.failed[0], ShardUnavailableError)

    no_table = ShardMap(1, (settings.catalog_dsn,))
    with FeatureReader(no_table) as reader, pytest.raises(psycopg.errors.UndefinedTable):
        reader.get_features(["e1"], feature_set)

    async def read_async() -> None:
        reader = AsyncFeatureReader(no_table)
        try:
            await reader.get_features(["e1"], feature_set)
        finally:
            await reader.close()

    with pytest.raises(psycopg.errors.UndefinedTable):
        asyncio.run(read_async())
