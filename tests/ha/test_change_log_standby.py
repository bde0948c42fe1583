"""Serving reads an HA shard from its standby, so it reads the change log there too: the log answers on a hot
standby (where LISTEN would not), and a change is seen there only once the standby can serve its features."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from shardctl.settings import load_settings
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.changes import poll_changes, start_cursor
from shardctl.store.pools import session_dsn
from shardctl.store.writer import FeatureRow


@pytest.mark.req("JTBD-02.invalidation-events")
def test_the_change_log_is_read_on_the_standby_after_its_replay(
    ha_stack: Stack, cluster: HACluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(ha_stack.settings_file))
    feature_set = f"ha_changes_{uuid.uuid4().hex[:8]}"
    ids = [f"c{i}" for i in range(20)]
    with FeatureStore.open(load_settings()) as store:
        dsn = session_dsn(store.shard_map.dsns[0], "prefer-standby")

        async def run() -> None:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            try:
                cursor, on_standby = await start_cursor(conn)
                assert on_standby is True  # the multi-host DSN landed on the replica
                store.write(feature_set, [FeatureRow(e, datetime(2026, 1, 1, tzinfo=UTC), {"i": 1}) for e in ids])
                seen: set[str] = set()
                deadline = time.monotonic() + 30
                while seen != set(ids):
                    assert time.monotonic() < deadline, f"the standby's log never showed the write: {seen}"
                    result = await poll_changes(conn, cursor)
                    assert result.on_standby is True
                    for change in result.changes:
                        if change.feature_set == feature_set:
                            seen |= set(change.entity_ids)
                            # Applied on the standby: its features are readable on the same server now.
                            found = await conn.execute(
                                "SELECT count(*) FROM entity_features WHERE feature_set = %s AND entity_id = ANY(%s)",
                                (feature_set, list(change.entity_ids)),
                            )
                            assert (await found.fetchone())[0] == len(change.entity_ids)
                    await asyncio.sleep(0.02)
            finally:
                await conn.close()

        asyncio.run(run())
