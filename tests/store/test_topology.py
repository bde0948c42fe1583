"""Shard map epochs and failures, on a private 2-shard stack.

These tests publish epochs, add constraints and stop a shard: things that would disturb the
session stack other tests share, so this module starts (and stops) a small stack of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import pytest

from shardctl.credentials import location_only
from shardctl.process import wait_until
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.async_reader import AsyncFeatureReader
from shardctl.store.errors import BadEntityIdError, FeatureWriteError, ShardUnavailableError
from shardctl.store.reader import ReadResult
from shardctl.store.shardmap import ShardMap, ShardMapError, ShardMapStore
from tests.store.conftest import T0, make_rows, private_stack, shard_snapshot


@dataclass
class OwnStack:
    stack: Stack
    settings: TesseraSettings


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStack]:
    with private_stack(tmp_path_factory.mktemp("own_stack"), 2) as (stack, settings):
        yield OwnStack(stack, settings)


@pytest.fixture
def store(own_stack: OwnStack) -> Iterator[FeatureStore]:
    with FeatureStore.open(own_stack.settings) as opened:
        yield opened


@pytest.mark.req("JTBD-03.shard-map")
def test_stack_up_initializes_epoch_one_and_initializing_again_changes_nothing(own_stack: OwnStack) -> None:
    maps = ShardMapStore(own_stack.settings.catalog_dsn)
    current = maps.current()
    # The catalog holds where each shard is; the map comes back with the caller's credentials.
    assert [location_only(d) for d in current.dsns] == [location_only(d) for d in own_stack.settings.shard_dsns()]
    assert maps.initialize_from_settings(own_stack.settings) == current
    assert maps.current() == current
    assert current.dsn_for("abc") == current.dsns[current.shard_for("abc")]


def test_bad_shard_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        ShardMap(1, ())
    with pytest.raises(ValueError, match="non-empty"):
        ShardMap(1, ("",))
    with pytest.raises(ShardMapError, match="catalog DSN"):
        ShardMapStore("")


@pytest.mark.req("JTBD-03.shard-map")
def test_a_published_epoch_reaches_a_running_reader_within_one_second(own_stack: OwnStack, store: FeatureStore) -> None:
    store.write("fs_epoch", make_rows(20))

    def publish_and_wait(before_epoch: int) -> int:
        published_at = time.monotonic()
        # Published as the control plane: the store's own (writer) role may not change the map.
        control = ShardMapStore(own_stack.settings.catalog_dsn)
        published = control.publish(store.shard_map.dsns, note="test: same topology, new epoch")
        assert published.epoch == before_epoch + 1
        while store.reader.shard_map.epoch != published.epoch and time.monotonic() - published_at < 1.0:
            time.sleep(0.005)
        assert store.reader.shard_map.epoch == published.epoch, "the reader did not learn the new epoch within 1 s"
        return published.epoch

    async def both_readers() -> None:
        on_loop = AsyncFeatureReader(store.watcher)  # the service's reader follows the same watcher
        try:
            before = store.get_features(["e1", "e2"], "fs_epoch")
            before_on_loop = await on_loop.get_features(["e1", "e2"], "fs_epoch")
            assert store.reader.pools_epoch == on_loop.pools_epoch == before.epoch == before_on_loop.epoch
            epoch = await asyncio.to_thread(publish_and_wait, before.epoch)
            after = store.get_features(["e1", "e2"], "fs_epoch")
            after_on_loop = await on_loop.get_features(["e1", "e2"], "fs_epoch")
            assert after.epoch == after_on_loop.epoch == epoch
            assert store.reader.pools_epoch == on_loop.pools_epoch == epoch  # pools were rebuilt for the new epoch
            assert set(after.records) == set(after_on_loop.records) == {"e1", "e2"}
        finally:
            await on_loop.close()

    asyncio.run(both_readers())


@pytest.mark.req("JTBD-03.writer")
def test_a_shard_failing_mid_batch_rolls_back_every_shard_and_the_batch_reruns(
    own_stack: OwnStack, store: FeatureStore
) -> None:
    store.write("fs_fail", make_rows(80))
    before = shard_snapshot(store.shard_map.dsns, "fs_fail")
    batch = make_rows(80, seed=5, ts=T0 + timedelta(hours=1)) + make_rows(20, prefix="n")
    # A real failure on shard 1 only, after validation passed: a constraint this batch violates there (added
    # as the control plane: the writer's role may not alter the table).
    admin_shard1 = own_stack.settings.shard_dsns()[1]
    with psycopg.connect(admin_shard1) as conn:
        conn.execute(
            "ALTER TABLE entity_features ADD CONSTRAINT reject_test "
            "CHECK (feature_set <> 'fs_fail' OR (features->>'visits')::int < 50) NOT VALID"
        )
    try:
        with pytest.raises(FeatureWriteError, match=r"shard 1: .*reject_test"):
            store.write("fs_fail", batch)
        assert shard_snapshot(store.shard_map.dsns, "fs_fail") == before
    finally:
        with psycopg.connect(admin_shard1) as conn:
            conn.execute("ALTER TABLE entity_features DROP CONSTRAINT reject_test")
    rerun = store.write("fs_fail", batch)
    assert (rerun.inserted, rerun.updated) == (20, 80)
    assert store.write("fs_fail", batch).unchanged == 100


@pytest.mark.req("JTBD-03.reader")
@pytest.mark.req("JTBD-03.writer")
def test_a_stopped_shard_gives_a_typed_error_and_the_other_shard_still_answers(
    own_stack: OwnStack, store: FeatureStore
) -> None:
    store.write("fs_down", make_rows(40))
    ids = [f"e{i}" for i in range(40)]
    shard_map = store.shard_map
    on_zero = [i for i in ids if shard_map.shard_for(i) == 0]
    state = own_stack.stack.load_state()
    shard1 = own_stack.stack.postgres_servers(state)[2]
    assert shard1.stop()
    try:
        result = store.get_features(ids, "fs_down")
        from_loop = _read_on_a_loop(store, ids, "fs_down")
        assert set(from_loop.failed) == {1}
        assert "shard 1" in str(from_loop.failed[1])
        assert from_loop.records == result.records
        assert set(result.failed) == {1}
        assert isinstance(result.failed[1], ShardUnavailableError)
        assert "shard 1" in str(result.failed[1])
        assert set(result.records) == set(on_zero)
        assert set(result.failed_ids[1]) == set(ids) - set(on_zero)
        assert result.missing == set()
        before = shard_snapshot(shard_map.dsns[:1], "fs_down")
        with pytest.raises(ShardUnavailableError, match="shard 1"):
            store.write("fs_down", make_rows(40, seed=1, ts=T0 + timedelta(days=1)))
        assert shard_snapshot(shard_map.dsns[:1], "fs_down") == before
    finally:
        shard1.start()
    # The pool reconnects with a back-off: the shard answers again within seconds of its restart.
    assert wait_until(lambda: not store.get_features(ids, "fs_down").failed, 15)
    healed = store.get_features(ids, "fs_down")
    assert healed.failed == {}
    assert set(healed.records) == set(ids)
    healed_from_loop = _read_on_a_loop(store, [*ids, "nobody"], "fs_down")
    assert healed_from_loop.records == healed.records
    assert healed_from_loop.missing == {"nobody"}
    with pytest.raises(BadEntityIdError):
        _read_on_a_loop(store, ["ok", ""], "fs_down")


def _read_on_a_loop(store: FeatureStore, ids: list[str], feature_set: str) -> ReadResult:
    """The async reader (what the service uses) over the same shard map, on a fresh event loop."""

    async def read() -> ReadResult:
        reader = AsyncFeatureReader(store.watcher, acquire_timeout=1.0, connect_timeout=1)
        try:
            return await reader.get_features(ids, feature_set)
        finally:
            await reader.close()

    return asyncio.run(read())
