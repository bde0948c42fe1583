"""The cutover's final check under the fence, on real servers: per link, the moved logical shards whose row counts
differ between source and target (every server counting at once, so writers wait for the slowest count)."""

from __future__ import annotations

import psycopg
import pytest

from shardctl.control.migration import replication
from shardctl.control.migration.engine import _count_mismatches
from shardctl.control.migration.table import MovedTable, count_rows
from tests.migrate.conftest import ServerPair, load_rows


@pytest.mark.req("JTBD-03.migration")
def test_the_final_check_names_each_links_logical_shard_whose_counts_differ(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    for dsn in (servers.source, servers.target):
        load_rows(dsn, moved_table, 600)
    with psycopg.connect(servers.source) as conn:
        shards = sorted(count_rows(conn, moved_table, range(256)))
    half = len(shards) // 2
    first, second = (
        replication.Link(replication.link_name(1, n), servers.source, servers.target, tuple(part), moved_table)
        for n, part in enumerate((shards[:half], shards[half:]))
    )
    assert _count_mismatches([first, second], moved_table) == {first: [], second: []}

    lacking = shards[-1]  # one of the second link's logical shards loses a row on the target
    with psycopg.connect(servers.target) as conn:
        conn.execute(
            f"DELETE FROM {moved_table.name} WHERE ctid = "
            f"(SELECT ctid FROM {moved_table.name} WHERE logical_shard = %s LIMIT 1)",
            (lacking,),
        )
    assert _count_mismatches([first, second], moved_table) == {first: [], second: [lacking]}
