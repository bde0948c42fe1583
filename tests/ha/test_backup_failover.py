"""Backups of an HA stack (issue 22, items 1 and 5): each shard's Patroni cluster is one stanza whose members all
archive (``archive_mode = always``), so the WAL chain has no gap when the primary dies. A base backup, then a hard
kill of the primary under acknowledged writes, the old primary back as a replica, more writes, a restore point,
and an accident: restored to the point, every row acknowledged before it is back, on both sides of the failover.
A base backup after the failover is taken from the new primary."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardctl.control.ha import shard_members
from shardctl.process import wait_until
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from testkit.ha.drill import PROBE_TABLE, AckWriter, ensure_probe_table, rows_present, wait_healthy
from tests.backup.test_backup_resharding import FEATURE_SET, _cli, _placed_rows, _write


def _archived_count(cluster: HACluster, port: int) -> int:
    """How many WAL segments the member on ``port`` has archived itself (its own ``pg_stat_archiver``)."""
    dsn = make_conninfo(cluster.shard_dsn(0), port=str(port), host="127.0.0.1", target_session_attrs="any")
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]  # type: ignore[index]


@pytest.mark.req("PLAT.backup-ha")
def test_the_archive_follows_the_primary_through_a_failover_and_a_restore_loses_no_acknowledged_row(
    ha_stack: Stack, cluster: HACluster
) -> None:
    """On the HA tests' shared stack (it leaves it healthy, the old primary back as a replica)."""
    data_dir = ha_stack.data_dir
    first = [f"first-{n:03d}" for n in range(30)]
    _write(data_dir, first)
    _cli(data_dir, "backup", "create", "--point", "before-failover")
    for member in cluster.members(0):  # the replica archives what it receives too: no gap if the primary dies
        assert wait_until(lambda m=member: _archived_count(cluster, m.plan.pg_port) > 0, 30.0), member.name

    dsn = cluster.shard_dsn(0)
    ensure_probe_table(dsn)
    old = next(m for m in shard_members(0, cluster.api_urls(0)) if m.role == "leader")
    member = cluster.member(old.name)
    writer = AckWriter(dsn).start()
    killed_at = time.monotonic()
    member.kill()
    try:
        assert writer.wait_for_new_primary_ack(killed_at, member.plan.pg_port, 60.0) is not None, writer.errors[-3:]
        time.sleep(0.5)  # a few more acknowledged rows on the new timeline
    finally:
        writer.stop()
    acked = {a.n for a in writer.acks}
    cluster.start_member(member)  # the old primary rejoins as a replica (pg_rewind) and archives again
    wait_healthy(cluster, 0)
    second = [f"second-{n:03d}" for n in range(30)]
    _write(data_dir, second)
    _cli(data_dir, "backup", "point", "after-failover")  # no new base backup: the replay crosses the failover

    with psycopg.connect(dsn, autocommit=True) as conn:  # the accident
        conn.execute("DELETE FROM entity_features WHERE feature_set = %s", (FEATURE_SET,))
        conn.execute(f"DROP TABLE {PROBE_TABLE}")
    made = _cli(data_dir, "backup", "create", "--point", "after-accident").output  # from the new primary
    assert "server-0: incr backup" in made, made

    into = data_dir.parent / "restored-ha"
    _cli(data_dir, "restore", "--to-point", "after-failover", "--into", str(into))
    restored = Stack(into)
    try:
        shard_map, copies = _placed_rows(into)
        assert set(copies) == set(first) | set(second), sorted(set(copies) ^ (set(first) | set(second)))
        assert set(copies.values()) == {1}
        present = rows_present(shard_map.dsns[0], writer.run_id)
        assert acked <= present, f"acknowledged rows lost: {sorted(acked - present)[:10]}"
        assert present <= set(range(1, max(acked) + 2)), "rows the writer never sent"  # +1: the one in flight
        _write(into, ["after-restore"])  # a plain server now: no synchronous standby to wait for
        assert _placed_rows(into)[1]["after-restore"] == 1
    finally:
        assert restored.down(purge=True) == []
