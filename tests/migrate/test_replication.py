"""Copy and catch-up of moving logical shards through a row-filtered publication, on real servers, while a
writer inserts and updates rows of moving and staying logical shards; verification; teardown."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from shardctl.control.migration import replication
from shardctl.control.migration.table import MovedTable
from shardctl.control.migration.verify import verify
from shardctl.process import wait_until
from tests.migrate.conftest import ServerPair, Writer, new_link, rows_of

MOVING = tuple(range(1, 256, 4))  # a quarter of the logical shards
STAYING = [s for s in range(256) if s not in MOVING]


def make_link(servers: ServerPair, table: MovedTable, rows: int = 0) -> replication.Link:
    return new_link(servers, table, MOVING, rows)


def synced_link(servers: ServerPair, table: MovedTable, rows: int) -> replication.Link:
    """A link whose initial copy of ``rows`` loaded rows is done."""
    link = make_link(servers, table, rows)
    replication.start(link)
    replication.wait_synced(link, timeout=120)
    return link


@pytest.mark.req("JTBD-03.migration-replication")
def test_copy_and_catch_up_under_writes_then_verify_clean_and_teardown_leaves_nothing(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    link = make_link(servers, moved_table, 20_000)
    writer = Writer(servers.source, moved_table, existing=20_000).start()
    try:
        replication.start(link)
        replication.wait_synced(link, timeout=120)
        state = replication.progress(link, count_rows=True)
        assert state.synced
        assert state.enabled
        assert state.errors == 0
        assert state.lag_bytes is not None
        assert state.slot_wal_status in ("reserved", "extended")
        writer.wait_acked(500)
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:3]
    assert len(writer.acked) >= 500, "the writer barely wrote: the test would prove nothing"
    replication.wait_caught_up(link)

    moving_expected = {k: v for k, v in writer.acked.items() if k[0] in MOVING}
    assert moving_expected, "no write hit a moving logical shard"
    assert len(moving_expected) < len(writer.acked), "no write hit a staying logical shard"
    on_target = rows_of(servers.target, moved_table, list(MOVING))
    assert rows_of(servers.source, moved_table, list(MOVING)) == on_target
    for key, (values, version) in moving_expected.items():
        assert on_target[key] == (values, version), f"acknowledged write of {key} not on the target"
    assert rows_of(servers.target, moved_table, STAYING) == {}, "rows of staying logical shards were copied"

    report = verify(servers.source, servers.target, MOVING, table=moved_table, catch_up=lambda: None)
    assert report.clean, report.summary()
    assert sum(s.target_rows for s in report.shards.values()) == len(on_target)

    first = replication.teardown(link)
    assert first.complete, first
    assert any(d.startswith("subscription") for d in first.dropped), first
    assert replication.leftovers(link) == {"slots": [], "publications": [], "subscriptions": []}
    assert replication.teardown(link).dropped == [], "a second teardown found something to drop"


@pytest.mark.req("JTBD-03.migration-verify")
def test_verify_rechecks_rows_written_during_verification_and_reports_planted_differences(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    link = synced_link(servers, moved_table, 8_000)
    writer = Writer(servers.source, moved_table, existing=8_000, seed=1).start()
    try:
        during = verify(
            servers.source, servers.target, MOVING, table=moved_table, catch_up=lambda: replication.wait_caught_up(link)
        )
    finally:
        writer.stop()
    assert during.clean, during.summary()

    # Deterministically, a row changes between a source read and the target read: the barrier writes it.
    changing = min(rows_of(servers.source, moved_table, list(MOVING)))

    def changer(times: int) -> Callable[[], None]:
        calls = iter(range(10**6))

        def write_then_catch_up() -> None:
            if next(calls) < times:
                with psycopg.connect(servers.source, autocommit=True) as conn:
                    conn.execute(
                        f"UPDATE {moved_table.name} SET version = version + 1 "
                        "WHERE (logical_shard, entity_id, feature_set) = (%s, %s, %s)",
                        changing,
                    )
            replication.wait_caught_up(link)

        return write_then_catch_up

    settles = verify(servers.source, servers.target, MOVING, table=moved_table, catch_up=changer(2))
    assert settles.clean, settles.summary()
    assert settles.rechecked == 1, "the row changed during verification was not re-checked"
    no_rounds = verify(servers.source, servers.target, MOVING, table=moved_table, catch_up=changer(2), rounds=0)
    assert no_rounds.different == [changing], "without re-check rounds the changed row would be reported"
    never = verify(servers.source, servers.target, MOVING, table=moved_table, catch_up=changer(10**6))
    assert never.different == [changing], "a row that changes on every read must be reported, not skipped"

    replication.wait_caught_up(link)
    replication.teardown(link)  # from here on the target is on its own: plant one difference of each kind
    victims = sorted(k for k in rows_of(servers.target, moved_table, list(MOVING)))[:3]
    with psycopg.connect(servers.target, autocommit=True) as conn:
        conn.execute(
            f"DELETE FROM {moved_table.name} WHERE (logical_shard, entity_id, feature_set) = (%s, %s, %s)", victims[0]
        )
        conn.execute(
            f"UPDATE {moved_table.name} SET features = features || '{{\"spend\": -1}}' "
            "WHERE (logical_shard, entity_id, feature_set) = (%s, %s, %s)",
            victims[1],
        )
        conn.execute(
            f"INSERT INTO {moved_table.name} VALUES (%s, 'planted', 'fs1', '{{}}', now(), 1)", (victims[2][0],)
        )
    report = verify(servers.source, servers.target, MOVING, table=moved_table)
    assert not report.clean
    assert report.missing == [victims[0]]
    assert report.different == [victims[1]]
    assert report.extra == [(victims[2][0], "planted", "fs1")]
    assert {s for s, summary in report.shards.items() if not summary.matched} == {v[0] for v in victims}


@pytest.mark.req("JTBD-03.migration-replication")
def test_teardown_after_a_partial_set_up_drops_what_exists_and_abort_purges_the_target(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    link = make_link(servers, moved_table, 2_000)
    replication.ensure_publication(link)
    replication.ensure_slot(link)  # killed here: no subscription yet
    report = replication.teardown(link)
    assert report.complete
    assert sorted(report.dropped) == [f"publication {link.name}", f"slot {link.name}"]
    assert replication.leftovers(link) == {"slots": [], "publications": [], "subscriptions": []}

    replication.start(link)
    replication.wait_synced(link, timeout=120)
    assert rows_of(servers.target, moved_table, list(MOVING))
    aborted = replication.teardown(link, purge_target=True)
    assert aborted.complete, aborted
    assert rows_of(servers.target, moved_table, list(MOVING)) == {}, "abort left copied rows on the target"
    assert replication.leftovers(link) == {"slots": [], "publications": [], "subscriptions": []}


@pytest.mark.req("JTBD-03.migration-replication")
def test_a_publication_for_other_logical_shards_is_refused(servers: ServerPair, moved_table: MovedTable) -> None:
    link = make_link(servers, moved_table)
    replication.ensure_publication(link)
    other = replication.Link(link.name, link.source_dsn, link.target_dsn, (0, 2), moved_table)
    try:
        with pytest.raises(replication.ReplicationError, match="covers logical shards"):
            replication.ensure_publication(other)
    finally:
        replication.teardown(link)


@pytest.mark.req("JTBD-03.migration-replication")
def test_a_lost_slot_is_reported_and_a_fresh_copy_recovers(servers: ServerPair, moved_table: MovedTable) -> None:
    """What a source failover before PG 17 does to a link: the new primary has no slot. The catch-up
    barrier says so instead of waiting, and tearing down (purging the target) and starting again converges."""
    link = synced_link(servers, moved_table, 4_000)
    with psycopg.connect(servers.source, autocommit=True) as conn:

        def slot_dropped() -> bool:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (link.name,),
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NULL",
                (link.name,),
            )
            return (
                conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (link.name,)).fetchone() is None
            )

        assert wait_until(slot_dropped, 30)
    writer = Writer(servers.source, moved_table, existing=4_000, seed=4).start().wait_acked(200)
    with pytest.raises(replication.ReplicationError, match="is gone from the source"):
        replication.wait_caught_up(link, timeout=5)
    assert replication.progress(link).lag_bytes is None
    with pytest.raises(replication.ReplicationError, match="lost its slot"):
        replication.start(link)  # a resumed run must not paper over the gap with a new slot

    assert replication.teardown(link, purge_target=True).complete
    replication.start(link)
    replication.wait_synced(link, timeout=120)
    writer.wait_acked(len(writer.acked) + 200).stop()
    assert not writer.errors, writer.errors[:3]
    replication.wait_caught_up(link)
    report = verify(servers.source, servers.target, MOVING, table=moved_table)
    assert report.clean, report.summary()
    assert replication.teardown(link).complete


@pytest.mark.req("JTBD-03.migration-replication")
def test_links_to_one_target_are_subscribed_in_one_transaction_and_copy_together(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    """A PG 15 target's launcher starts apply workers at most once per ``wal_retrieve_retry_interval``: links
    subscribed one commit after another each waited that long to begin copying. ``start_all`` commits one
    target's subscriptions together (the same creating transaction on the target), and a second call adds none."""
    first = new_link(servers, moved_table, MOVING[::2], 3_000)
    second = new_link(servers, moved_table, MOVING[1::2])
    replication.start_all([first, second])
    with psycopg.connect(servers.target) as conn:
        creators = conn.execute(
            "SELECT subname, xmin::text FROM pg_subscription WHERE subname = ANY(%s)", ([first.name, second.name],)
        ).fetchall()
    assert len(creators) == 2
    assert creators[0][1] == creators[1][1], creators
    assert replication.ensure_subscriptions([first, second]) == []
    for link in (first, second):
        replication.wait_synced(link, timeout=120)
    assert rows_of(servers.target, moved_table, list(MOVING)) == rows_of(servers.source, moved_table, list(MOVING))
    for link in (first, second):
        assert replication.teardown(link, purge_target=True).complete
    with pytest.raises(ValueError, match="one target"):
        replication.ensure_subscriptions([first, replication.Link(first.name, first.source_dsn, "dbname=other", (1,))])
