"""The feature store's writer rides out a hard-kill failover: batches are retried on the new primary
(idempotent upserts), callers see latency rather than errors, and every acknowledged row is stored."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from shardctl.control.ha import leader, shard_members
from shardctl.process import wait_until
from shardctl.settings import load_settings
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.writer import FeatureRow
from testkit.ha.drill import wait_healthy


@pytest.mark.req("JTBD-04.client-failover")
def test_feature_writer_retries_through_a_failover_and_loses_no_acknowledged_row(
    ha_stack: Stack, cluster: HACluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(ha_stack.settings_file))
    feature_set = f"ha_{uuid.uuid4().hex[:8]}"
    acked: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def batch(b: int) -> list[FeatureRow]:
        return [FeatureRow(f"b{b}-e{i}", now, {"b": b, "i": i}) for i in range(20)]

    with FeatureStore.open(load_settings()) as store:

        def write_batches() -> None:
            b = 0
            while not stop.is_set():
                try:
                    store.write(feature_set, batch(b))
                    acked.append((b, time.monotonic()))
                except BaseException as exc:
                    errors.append(exc)
                    return
                b += 1
                time.sleep(0.02)

        thread = threading.Thread(target=write_batches, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: len(acked) >= 10 or errors, 30), "the writer never got going"
            old = leader(shard_members(0, cluster.api_urls(0)))
            member = cluster.member(old.name)
            member.kill()
            promoted = wait_until(
                lambda: (new := leader(shard_members(0, cluster.api_urls(0)))) and new.name != old.name, 40
            )
            promoted_at = time.monotonic()
            # Batches go on after the new primary took over (the one in flight at the kill rode it out).
            after = promoted and wait_until(lambda: errors or sum(a[1] > promoted_at for a in acked) >= 5, 40)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert errors == []
        assert promoted, "no new primary after the kill"
        assert after, "no batch acknowledged after the failover"
        ids = [f"b{b}-e{i}" for b, _ in acked for i in range(20)]
        result = store.get_features(ids, feature_set)
        assert result.failed == {}
        assert len(result.records) == len(ids)
    cluster.start_member(member)
    wait_healthy(cluster, 0)
