"""The migration engine and `shardctl migrate` end to end, on a private stack of three servers (no load here:
the runs under a writer and the prediction service are in the load tests).

The stack starts with its three servers placed (``l % 3``); the tests shrink it to two servers and grow it
back, kill `shardctl migrate run` with SIGKILL during the copy and resume it, abort before cutover, and feed
the CLI bad input. After every finished migration: each row is on the server the placement names, no moved
row is left on a source, no row is lost or doubled, the rows moved are the plan's, and no replication object
is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.control.migration.engine import CutoverPolicy, MigrationEngine, MigrationError
from shardctl.control.migration.journal import Journal
from shardctl.process import free_port, stop_pid, wait_until
from shardctl.settings import TesseraSettings
from shardctl.store import FeatureStore
from shardctl.store.changes import CHANGE_TABLE
from shardctl.store.fence import raise_fence
from shardctl.store.hashing import logical_shard_for
from shardctl.store.shardmap import ShardMap, ShardMapStore
from tests.store.conftest import make_rows, private_stack
from tests.store.fence_gate import fence_gate, transaction_ended, wait_for_blocked_session

ROOT = Path(__file__).resolve().parents[2]
SHARDCTL = str(Path(sys.executable).parent / "shardctl")
FEATURE_SET = "mig_v1"
QUICK = CutoverPolicy(grace_s=20.0, settle_s=0.2, retry_pause_s=0.5)


@dataclass
class ThreeServers:
    root: Path
    settings: TesseraSettings
    catalog: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TESSERA_DATA_DIR": str(self.root), "TESSERA_CATALOG_DSN": self.catalog}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeServers]:
    root = tmp_path_factory.mktemp("three_servers")
    with private_stack(root, 3) as (_, settings):
        yield ThreeServers(root, settings, settings.catalog_dsn or "")


@pytest.fixture(scope="module")
def store(three: ThreeServers) -> Iterator[FeatureStore]:
    """A reader and writer following the epochs (their watcher acknowledges each one), with 30k rows."""
    with FeatureStore.open(three.settings) as opened:
        opened.write(FEATURE_SET, make_rows(30_000, prefix="m"))
        yield opened


def all_rows(maps: ShardMapStore) -> dict[str, dict[tuple[str, str], tuple[int, object]]]:
    """Every stored row on every registered server: server -> (entity, feature set) -> (logical shard, version)."""
    found = {}
    for name, dsn in maps.registered_servers().items():
        try:
            with psycopg.connect(dsn, connect_timeout=3) as conn:
                rows = conn.execute("SELECT entity_id, feature_set, logical_shard, version FROM entity_features")
                found[name] = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        except psycopg.OperationalError:
            continue  # a registered server that is down (the CLI test's) holds nothing
    return found


def replication_leftovers(maps: ShardMapStore) -> list[str]:
    leftovers = []
    for name, dsn in maps.registered_servers().items():
        try:
            with psycopg.connect(dsn, connect_timeout=3) as conn:
                leftovers += [
                    f"{name}: {kind} {obj}"
                    for kind, obj in conn.execute(
                        "SELECT 'slot', slot_name::text FROM pg_replication_slots UNION ALL "
                        "SELECT 'publication', pubname::text FROM pg_publication UNION ALL "
                        "SELECT 'subscription', subname::text FROM pg_subscription"
                    )
                ]
        except psycopg.OperationalError:
            continue
    return leftovers


def assert_placed_exactly(maps: ShardMapStore, before: dict, moved_rows: int, planned_rows: int) -> ShardMap:
    """Every row on the server the placement names, none left elsewhere, none lost or doubled."""
    current = maps.current()
    placement = current.placement_by_name()
    after = all_rows(maps)
    misplaced = [(s, k) for s, rows in after.items() for k, (shard, _) in rows.items() if placement[shard] != s]
    assert misplaced[:5] == []
    union = {k: v for rows in after.values() for k, v in rows.items()}
    assert sum(len(rows) for rows in after.values()) == len(union)  # no row on two servers
    assert union == {k: v for rows in before.values() for k, v in rows.items()}  # none lost, none changed
    assert moved_rows == planned_rows
    assert replication_leftovers(maps) == []
    return current


def moved_row_count(before: dict, placement_after: list[str]) -> int:
    return sum(1 for s, rows in before.items() for (shard, _) in rows.values() if placement_after[shard] != s)


def _change_log_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {CHANGE_TABLE}").fetchone()[0]


def placed(maps: ShardMapStore) -> list[str]:
    current = maps.current()
    return [name for name in current.servers if current.logical_shards_on(name)]


@pytest.mark.req("JTBD-03.migration")
@pytest.mark.req("PLAT.migrate-cli")
def test_shrinking_three_servers_to_two_then_growing_back_moves_exactly_the_planned_rows(
    three: ThreeServers, store: FeatureStore
) -> None:
    engine = MigrationEngine(three.catalog, policy=QUICK)
    maps = engine.maps
    for target, through_the_cli in ((["server-0", "server-1"], False), (["server-0", "server-1", "server-2"], True)):
        before = all_rows(maps)
        report = engine.plan(target)
        assert report.rows == moved_row_count(before, report.placement_after)
        if through_the_cli:  # the same engine from `shardctl migrate run`, with its progress bars
            result = CliRunner(env=three.env).invoke(main, ["migrate", "run", "--add-server", "server-2"])
            assert result.exit_code == 0, result.output
            assert "done: epoch" in result.output
            assert "copy" in result.output
            assert "verify" in result.output
        else:
            record = engine.begin(target)
            done = engine.run(record.id)
            assert (done.state, done.phase) == ("done", "cleaned")
        current = assert_placed_exactly(maps, before, moved_row_count(before, report.placement_after), report.rows)
        assert placed(maps) == target
        assert len(report.moves) == 85  # server-2's 85 logical shards leave, then 85 come back: the minimum
        # The open store follows the epoch without a restart: reads find every row where it now lives.
        wait_until(lambda current=current: store.shard_map.epoch == current.epoch, 10)
        ids = [f"m{i}" for i in range(0, 30_000, 97)]
        read = store.get_features(ids, FEATURE_SET)
        assert sorted(read.records) == sorted(ids)
        assert all(
            current.servers[r.shard] == current.placement_by_name()[logical_shard_for(r.entity_id)]
            for r in read.records.values()
        )
        assert engine.status()["state"] == "done"


@pytest.mark.req("JTBD-03.migration")
@pytest.mark.req("PLAT.migrate-cli")
def test_kill_9_of_migrate_run_during_the_copy_then_resume_ends_verified_and_placed(
    three: ThreeServers, store: FeatureStore
) -> None:
    store.write(FEATURE_SET, make_rows(120_000, prefix="big"))  # a copy long enough to be killed in
    maps = ShardMapStore(three.catalog)
    before = all_rows(maps)
    removing = placed(maps)[-1]
    journal = Journal(three.catalog)
    proc = subprocess.Popen(
        [SHARDCTL, "migrate", "run", "--remove-server", removing, "--json"],
        cwd=ROOT,
        env=three.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    phase_at_kill = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                running = journal.running()
            except psycopg.errors.UndefinedTable:  # the run has not created its journal yet (a loaded machine)
                running = None
            if running is not None and running.phase == "copying":  # links set up, the servers are copying
                os.kill(proc.pid, signal.SIGKILL)
                phase_at_kill = running.phase
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and phase_at_kill is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert stop_pid(proc.pid)
    assert phase_at_kill == "copying", f"not killed during the copy: {proc.stderr.read() if proc.stderr else ''}"
    running = journal.running()
    assert running is not None
    assert running.phase == "copying"

    status = CliRunner(env=three.env).invoke(main, ["migrate", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["phase"] == "copying"
    logged_before = _change_log_rows(maps.registered_servers()[removing])

    resumed = subprocess.run(
        [SHARDCTL, "migrate", "resume", "--json"],
        cwd=ROOT,
        env=three.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert (final["state"], final["phase"]) == ("done", "cleaned")
    phases = [e["phase"] for e in final["events"]]
    assert phases == ["planned", "provisioned", "copying", "synced", "verified", "cut_over", "cleaned"]
    verified = next(e for e in final["events"] if e["phase"] == "verified")
    assert all(summary.startswith("clean") for summary in verified["detail"]["reports"].values())
    plan = journal.get(running.id).plan
    assert_placed_exactly(maps, before, moved_row_count(before, plan["placement_after"]), plan["rows"])
    assert removing not in placed(maps)
    # Cleanup deleted every row of the removed server without logging them as changes: they moved, unchanged.
    assert _change_log_rows(maps.registered_servers()[removing]) == logged_before


@pytest.mark.req("JTBD-03.migration")
@pytest.mark.req("PLAT.migrate-cli")
def test_abort_before_cutover_leaves_the_placement_and_the_data_as_they_were(
    three: ThreeServers, store: FeatureStore
) -> None:
    engine = MigrationEngine(three.catalog, policy=QUICK)
    maps = engine.maps
    now = placed(maps)
    target = [*now, "server-2"] if "server-2" not in now else [s for s in now if s != "server-2"]
    epoch_before = maps.current()
    before = all_rows(maps)
    record = engine.begin(target)
    for phase in ("provisioned", "copying", "synced", "verified"):
        engine.run_phase(record.id, phase)
    copied = sum(1 for rows in all_rows(maps).values() for _ in rows) - sum(len(r) for r in before.values())
    assert copied == record.plan["rows"]  # the targets hold the copy now
    result = CliRunner(env=three.env).invoke(main, ["migrate", "abort", "--force"])
    assert result.exit_code == 0, result.output
    assert "placement is unchanged" in result.output
    assert maps.current() == epoch_before  # no epoch published: traffic never moved
    assert all_rows(maps) == before
    assert replication_leftovers(maps) == []
    assert engine.status()["state"] == "aborted"
    report = store.write(FEATURE_SET, make_rows(100, prefix="after_abort"))
    assert report.epoch == epoch_before.epoch


@pytest.mark.req("PLAT.migrate-cli")
def test_bad_input_gives_one_line_and_a_non_zero_exit(three: ThreeServers) -> None:
    runner = CliRunner(env=three.env)

    def fails(args: list[str], expected: str, code: int = 1) -> None:
        result = runner.invoke(main, args)
        assert result.exit_code == code, (args, result.output)
        lines = result.output.strip().splitlines()
        assert "Traceback" not in result.output
        assert expected in lines[-1], (args, result.output)
        if code == 1:
            assert len(lines) == 1, result.output

    fails(["migrate", "plan", "--to-servers", "server-0,nope"], "unknown server nope")
    fails(["migrate", "plan"], "exactly one of --to-servers", code=2)
    fails(["migrate", "plan", "--add-server", "server-0"], "already holds logical shards", code=2)
    fails(["migrate", "resume"], "no migration is running")
    fails(["migrate", "abort", "--force"], "no migration is running")
    dead = f"host=127.0.0.1 port={free_port()} dbname=tessera user=tessera"
    fails(["servers", "add", "down-1", "--dsn", dead], "server down-1 is unreachable")
    ShardMapStore(three.catalog).register_server("down-1", dead)  # registered while up, then gone
    fails(["migrate", "plan", "--add-server", "down-1"], "server down-1 is unreachable")
    fails(["migrate", "run", "--add-server", "down-1"], "server down-1 is unreachable")

    engine = MigrationEngine(three.catalog)
    now = placed(engine.maps)
    running = engine.begin([*now, "server-2"] if "server-2" not in now else now[:-1])
    fails(["migrate", "run", "--to-servers", ",".join(now)], f"migration {running.id} is already running")
    with pytest.raises(MigrationError, match="already running"):
        engine.begin(now)
    status = runner.invoke(main, ["migrate", "status"])
    assert status.exit_code == 0
    assert f"migration {running.id} running: phase planned" in status.output
    assert runner.invoke(main, ["migrate", "abort", "--force"]).exit_code == 0

    listed = runner.invoke(main, ["servers", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    by_name = {s["name"]: s for s in json.loads(listed.output)["servers"]}
    assert by_name["down-1"]["reachable"] is False
    assert by_name["server-0"]["reachable"] is True
    assert "password" not in listed.output
    planned = runner.invoke(main, ["migrate", "plan", "--json", "--to-servers", ",".join(now)])
    assert planned.exit_code == 0
    assert json.loads(planned.output)["moves"] == []


@pytest.mark.req("JTBD-03.migration")
def test_a_cutover_that_cannot_fence_in_time_gives_up_without_moving_and_resume_finishes_it(
    three: ThreeServers, store: FeatureStore
) -> None:
    engine = MigrationEngine(three.catalog, policy=CutoverPolicy(lock_wait_s=0.3, attempts=2, retry_pause_s=0.1))
    maps = engine.maps
    now = placed(maps)
    target = [*now, "server-2"] if "server-2" not in now else [s for s in now if s != "server-2"]
    record = engine.begin(target)
    for phase in ("provisioned", "copying", "synced", "verified"):
        engine.run_phase(record.id, phase)
    first_pair = record.plan["pairs"][0]
    source = maps.registered_servers()[first_pair["source"]]
    moving = first_pair["logical_shards"][0]
    before = maps.current()
    # A long write to a moving logical shard holds its fence row: the bounded raise gives up, twice.
    with psycopg.connect(source) as holder:
        holder.execute("SELECT 1 FROM tessera_logical_shard_fence WHERE logical_shard = %s FOR SHARE", (moving,))
        with pytest.raises(MigrationError, match="cutover gave up after 2 attempts"):
            engine.run_phase(record.id, "cut_over")
        holder.rollback()
    assert maps.current() == before  # nothing was fenced, so nothing had to be published
    # A cutover killed between raising the fence and publishing: the fence is ahead of every epoch.
    raise_fence(source, [moving], before.epoch + 1)
    eid = next(f"m{i}" for i in range(30_000) if logical_shard_for(f"m{i}") == moving)
    row = next(r for r in make_rows(30_000, prefix="m", seed=7) if r.entity_id == eid)
    stored_before = store.get_features([eid], FEATURE_SET).records[eid].features
    assert stored_before != row.features  # so "not written yet" and "written" can be told apart
    with ThreadPoolExecutor(1) as pool:
        # The write is seen arriving at its fence check (queued behind the gate), then let through to find
        # the raised fence: refused, it rolls back and waits for an epoch that no one publishes yet.
        with fence_gate(source, [moving]) as gate:
            writing = pool.submit(store.write, FEATURE_SET, [row])
            writer_pid = wait_for_blocked_session(source, gate)
        assert wait_until(lambda: transaction_ended(source, writer_pid), 30), "the fenced write never rolled back"
        assert not writing.done(), writing.result()  # held at the fence: no epoch reaches it yet
        assert store.get_features([eid], FEATURE_SET).records[eid].features == stored_before
        done = engine.resume()  # lowers the fence first (publishes the placement again), then cuts over
        report = writing.result(30)
    assert report.retries >= 1  # it waited and was routed again: latency, not an error
    assert report.epoch > before.epoch
    assert (done.state, done.phase) == ("done", "cleaned")
    stored = store.get_features([eid], FEATURE_SET).records[eid]
    assert stored.features == row.features  # the write survived the move
    assert placed(maps) == target
    assert replication_leftovers(maps) == []
