"""The migrating process is SIGKILLed mid-way; running the same steps again ends in the same verified state,
with one slot, one publication and one subscription, never a second copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from shardctl.control.migration import replication
from shardctl.control.migration.table import MovedTable
from shardctl.control.migration.verify import verify
from shardctl.process import stop_pid, wait_until
from tests.migrate.conftest import ServerPair, Writer, new_link, rows_of

ROOT = Path(__file__).resolve().parents[2]
MOVING = tuple(range(0, 256, 2))  # half of the logical shards: a copy long enough to be killed in


def spawn_mover(link: replication.Link, *extra: str) -> subprocess.Popen:
    spec = {
        "name": link.name,
        "source": link.source_dsn,
        "target": link.target_dsn,
        "shards": list(link.logical_shards),
        "table": link.table.name,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.migrate.mover", json.dumps(spec), *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "READY", f"mover said {line!r}"
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert stop_pid(proc.pid)


def copy_state(link: replication.Link) -> set[str]:
    with psycopg.connect(link.target_dsn) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT srsubstate::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid "
                "WHERE s.subname = %s",
                (link.name,),
            )
        }


def resume_and_verify(link: replication.Link, writer: Writer) -> None:
    """What `shardctl migrate resume` will do for this link: every step again, then wait and verify."""
    replication.start(link)
    replication.wait_synced(link, timeout=180)
    writer.wait_acked(len(writer.acked) + 200)
    writer.stop()
    assert not writer.errors, writer.errors[:3]
    replication.wait_caught_up(link)
    report = verify(link.source_dsn, link.target_dsn, link.logical_shards, table=link.table)
    assert report.clean, report.summary()
    assert rows_of(link.source_dsn, link.table, list(MOVING)) == rows_of(link.target_dsn, link.table, list(MOVING))
    found = replication.leftovers(link)
    assert found["slots"] == [link.name], f"expected only the link's slot, found {found['slots']}"
    assert found["publications"] == [link.name]
    assert found["subscriptions"] == [link.name]
    assert replication.teardown(link).complete
    assert replication.leftovers(link) == {"slots": [], "publications": [], "subscriptions": []}


@pytest.mark.req("JTBD-03.migration-replication")
def test_kill_during_the_initial_copy_then_resume(servers: ServerPair, moved_table: MovedTable) -> None:
    link = new_link(servers, moved_table, MOVING, 160_000)
    writer = Writer(servers.source, moved_table, existing=160_000, seed=2).start()
    mover = spawn_mover(link)
    assert wait_until(lambda: copy_state(link) & {"d"}, 60, interval=0.02), "the copy never started"
    kill(mover)
    assert "r" not in copy_state(link), "the copy finished before the kill: the test proves nothing"
    resume_and_verify(link, writer)


@pytest.mark.req("JTBD-03.migration-replication")
def test_kill_between_slot_and_subscription_then_resume_adopts_the_slot(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    link = new_link(servers, moved_table, MOVING, 5_000)
    writer = Writer(servers.source, moved_table, existing=5_000, seed=3).start()
    kill(spawn_mover(link, "--stop-after", "slot"))
    assert replication.leftovers(link)["subscriptions"] == []
    assert replication.ensure_slot(link) is False, "the slot the killed run made was not adopted"
    resume_and_verify(link, writer)
