"""Reads ride out a hard kill of a shard's primary: the serving reader reads the synchronous replica
(``target_session_attrs=prefer-standby``), which keeps answering while Patroni fails over to it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardctl.control.ha import leader, shard_members
from shardctl.settings import load_settings
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.async_reader import AsyncFeatureReader
from shardctl.store.writer import FeatureRow
from testkit.ha.drill import wait_healthy


@pytest.mark.req("JTBD-04.reads-through-failover")
def test_standby_reads_keep_answering_through_a_hard_kill_of_the_primary(
    ha_stack: Stack, cluster: HACluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(ha_stack.settings_file))
    feature_set = f"ha_read_{uuid.uuid4().hex[:8]}"
    ids = [f"r{i}" for i in range(50)]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    old = leader(shard_members(0, cluster.api_urls(0)))
    assert old is not None
    member = cluster.member(old.name)
    with FeatureStore.open(load_settings()) as store:
        store.write(feature_set, [FeatureRow(e, now, {"i": i}) for i, e in enumerate(ids)])
        dsn = store.shard_map.dsns[0]
        with psycopg.connect(make_conninfo(dsn, target_session_attrs="prefer-standby")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True  # lands on the replica

        def promoted() -> bool:
            new = leader(shard_members(0, cluster.api_urls(0)))
            return new is not None and new.name != old.name

        async def read_through_the_failover() -> tuple[int, int, set[int]]:
            reader = AsyncFeatureReader(
                store.watcher, acquire_timeout=1.0, connect_timeout=1, target_session_attrs="prefer-standby"
            )
            try:
                deadline = time.monotonic() + 5
                while len((await reader.get_features(ids, feature_set)).records) < len(ids):
                    assert time.monotonic() < deadline, "the replica never showed the rows"
                    await asyncio.sleep(0.05)
                member.kill()  # SIGKILL to the primary's Patroni and Postgres
                deadline = time.monotonic() + 60
                promoted_at: float | None = None
                reads = failed = 0
                sizes: set[int] = set()
                # The whole failover window: until the replica is seen promoted, and 2 s of reads after that.
                while promoted_at is None or time.monotonic() - promoted_at < 2.0:
                    assert time.monotonic() < deadline, "no new primary within 60 s of the kill"
                    result = await reader.get_features(ids, feature_set)
                    reads += 1
                    failed += bool(result.failed)
                    sizes.add(len(result.records))
                    if promoted_at is None and reads % 10 == 0 and await asyncio.to_thread(promoted):
                        promoted_at = time.monotonic()
                    await asyncio.sleep(0.05)
                return reads, failed, sizes
            finally:
                await reader.close()

        reads, failed, sizes = asyncio.run(read_through_the_failover())
        new = leader(shard_members(0, cluster.api_urls(0)))
    cluster.start_member(member)
    wait_healthy(cluster, 0)
    assert new is not None, "no leader after the failover"
    assert new.name != old.name, "no failover happened during the reads"
    assert reads > 50
    assert failed == 0, f"{failed} of {reads} reads failed during the failover"
    assert sizes == {len(ids)}
