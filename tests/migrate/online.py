"""What the online-migration tests share: the served stack of ``testkit.online`` and the traffic of
``testkit.traffic`` around a migration run by the real engine."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shardctl.control.migration.engine import MigrationEngine
from shardctl.store import FeatureStore
from testkit.online import SERVED_ENTITIES, OnlineEnv, online_env, served_id
from testkit.traffic import (
    Audit,
    ClientLog,
    OpenLoopClient,
    SteadyWriter,
    WriteLog,
    audit,
    minimum_rows_moved,
    rows_moved,
    rows_per_logical_shard,
)

__all__ = ["MigrationUnderLoad", "OnlineEnv", "assert_clean", "migrate_under_load", "online_env", "written_set"]


def written_set(to_servers: Sequence[str]) -> str:
    """The writer's feature set of one migration (its audit checks that run's rows only)."""
    return f"online_traffic_to{len(to_servers)}"


@dataclass
class MigrationUnderLoad:
    """A migration's outcome with the traffic around it."""

    writes: WriteLog
    requests: ClientLog
    audit: Audit
    moved: int
    minimum: float  # rows a row-balanced placement must move (traffic.minimum_rows_moved)
    before: dict[int, str]
    after: dict[int, str]
    cutover: dict  # the engine's report of its cut_over phase (journal event): fence, drain, final check


def migrate_under_load(
    env: OnlineEnv, to_servers: Sequence[str], *, seed_rows: int = 20_000, settle_seconds: float = 3.0
) -> MigrationUnderLoad:
    """Seed rows, start the writer and the open-loop client, migrate to ``to_servers`` with the real engine,
    keep the traffic going ``settle_seconds`` past the end, then audit every row on every server."""
    before = env.placement()
    with FeatureStore.open(env.settings, prepare_topology=False) as store:
        writer = SteadyWriter(store, written_set(to_servers))
        writer.seed_rows(seed_rows)
        client = OpenLoopClient(
            env.service.url, [served_id(i) for i in range(SERVED_ENTITIES)], headers=env.service.auth_headers
        )
        writer.start()
        client.start()
        try:
            time.sleep(settle_seconds)
            engine = MigrationEngine(env.catalog_dsn)
            record = engine.begin(list(to_servers))
            engine.run(record.id)
            cutover = next(detail for phase, _, detail in engine.journal.events(record.id) if phase == "cut_over")
            time.sleep(settle_seconds)
        finally:
            requests = client.stop()
            writes = writer.stop()
    after = env.placement()
    servers = env.servers()
    counts = rows_per_logical_shard(servers.values())
    return MigrationUnderLoad(
        writes,
        requests,
        audit(servers, after, written_set(to_servers), writes.acknowledged),
        rows_moved(before, after, counts),
        minimum_rows_moved(before, list(to_servers), counts),
        before,
        after,
        cutover,
    )


def assert_clean(result: MigrationUnderLoad, to_servers: Sequence[str]) -> None:
    """The issue's done-when, checked on a migration's outcome."""
    assert result.requests.failures == [], result.requests.outcomes
    assert result.requests.outcomes["ok"] > 0
    assert result.writes.failures == []
    assert len(result.writes.acknowledged) > 0
    assert result.audit.problems() == {}, result.audit.problems()
    assert set(result.after.values()) == set(to_servers), "every target server holds logical shards"
    assert 0 < result.moved <= 1.05 * result.minimum, (result.moved, result.minimum)
    # The writer wrote the moving logical shards throughout: the final check read the change log since its
    # snapshots, not every moved row, under the fence (shardctl/control/migration/final_check.py).
    assert result.cutover["final_check"] == "changes", result.cutover
    assert result.cutover["keys_compared"] > 0, result.cutover
    moved_shards = sum(1 for lg in result.before if result.before[lg] != result.after[lg])
    fewest_shards = math.ceil(minimum_rows_moved(result.before, to_servers, dict.fromkeys(result.before, 1)))
    assert moved_shards <= fewest_shards, (moved_shards, fewest_shards)
