"""The resharding plan checks each target's disk (issue 23, item 4): both copies exist until cleanup, so a target
must hold what it receives, with headroom, and keep a reserve free.

The verdict and the size parser are pure (no server); the rest runs on a private stack of two servers with a
third added empty, through `shardctl`: a target declared too small refuses `migrate plan` and `migrate run` with
one line and changes nothing; with room the plan reports each target's need and free space, measured on the
stack's filesystem or declared, the tighter of the two; a migration with room runs and the target grows by less
than the plan said it needs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.cli import main
from shardctl.control.migration.disk import (
    HEADROOM,
    DiskSizeError,
    DiskSpace,
    check_targets,
    describe,
    format_bytes,
    parse_size,
    refusal,
)
from shardctl.control.migration.journal import Journal
from shardctl.settings import TesseraSettings
from shardctl.stack.disk import StackDiskSpace
from shardctl.stack.layout import StackLayout, StackState
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMapError, ShardMapStore
from tests.store.conftest import make_rows, private_stack

GB = 10**9


# --- the verdict and the sizes (pure) --------------------------------------------------------------------------------


@pytest.mark.req("JTBD-03.reshard-disk-check")
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500GB", 500 * GB),
        ("40GiB", 40 * 2**30),
        ("50Gi", 50 * 2**30),  # a Kubernetes quantity, as a PVC's size is written
        ("1.5TB", 1_500 * GB),
        ("1.5 tb", 1_500 * GB),
        ("8000000000", 8 * GB),
        ("64kB", 64_000),
        ("2MiB", 2 * 2**20),
    ],
)
def test_sizes_parse_decimal_binary_and_plain_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.req("JTBD-03.reshard-disk-check")
@pytest.mark.parametrize("text", ["", "GB", "-5GB", "0", "0.1", "12XB", "1,5TB", "five GB"])
def test_a_size_that_cannot_be_read_says_what_can(text: str) -> None:
    with pytest.raises(DiskSizeError, match="size"):
        parse_size(text)


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_sizes_print_in_the_units_they_are_read_in() -> None:
    assert format_bytes(parse_size("20GB")) == "20.0 GB"
    assert format_bytes(12_345_678_901) == "12.3 GB"
    assert format_bytes(999) == "999 B"


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_a_target_fits_only_with_the_headroom_and_the_reserve_left_free() -> None:
    capacity = 20 * GB  # 2 GB reserve
    incoming = 8 * GB  # needs 10 GB with the headroom
    fits, short, unknown = check_targets(
        {"a": incoming, "b": incoming, "c": incoming},
        {"a": DiskSpace(12 * GB, capacity, "declared"), "b": DiskSpace(12 * GB - 1, capacity, "declared")},
    )
    assert (fits.needed_bytes, fits.reserve_bytes, fits.fits) == (math.ceil(incoming * HEADROOM), 2 * GB, True)
    assert short.fits is False  # one byte short of the reserve
    assert (unknown.fits, unknown.source, unknown.free_bytes) == (None, None, None)
    message = refusal([fits, short, unknown])
    assert message == (
        "b needs 10.0 GB for the copy (both copies exist until cleanup) and 2.0 GB kept free, but has 12.0 GB "
        "free (of 20.0 GB, declared): give it more disk and declare it with 'shardctl servers disk b --capacity "
        "...', or add servers to the target so each receives less"
    )
    assert "\n" not in message
    assert refusal([fits, unknown]) is None
    # The WAL the copy writes stays until a checkpoint: as much as the data, up to the target's max_wal_size.
    small, large = check_targets({"s": GB, "t": incoming}, {"s": None, "t": None}, max_wal={"s": 2 * GB, "t": 2 * GB})
    assert (small.wal_bytes, small.needed_bytes) == (GB, math.ceil(GB * HEADROOM) + GB)
    assert (large.wal_bytes, large.needed_bytes) == (2 * GB, 12 * GB)
    assert "shardctl servers disk c --capacity SIZE" in describe(unknown)
    assert describe(fits).endswith(": fits")


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_targets_on_one_volume_need_the_sum_and_each_member_of_a_cluster_holds_a_copy() -> None:
    volume = DiskSpace(29 * GB, 100 * GB, "filesystem of /srv/pg", volume="dev1")
    alone = check_targets({"a": 8 * GB}, {"a": volume})
    assert alone[0].fits is True  # 29 - 10 >= 10
    together = check_targets({"a": 8 * GB, "b": 8 * GB}, {"a": volume, "b": volume})
    assert [(v.fits, v.shared_with) for v in together] == [(False, ("b",)), (False, ("a",))]
    message = refusal(together)
    assert message is not None
    assert message.startswith("a and b (on one volume) need 20.0 GB together")
    assert message.count("need") == 1  # one volume, one complaint
    assert "free space there" in message  # not declared: declaring would not help
    pair = check_targets({"a": 8 * GB}, {"a": DiskSpace(29 * GB, 100 * GB, "filesystem", volume="dev1", copies=2)})
    assert (pair[0].needed_bytes, pair[0].fits) == (20 * GB, False)


@pytest.mark.req("JTBD-03.reshard-disk-check")
@settings(max_examples=200, deadline=None)
@given(
    incoming=st.integers(0, 10**13),
    more=st.integers(0, 10**12),
    free=st.integers(0, 10**13),
    capacity=st.integers(1, 10**14),
)
def test_more_data_never_fits_better_and_more_free_space_never_worse(
    incoming: int, more: int, free: int, capacity: int
) -> None:
    def fits(incoming: int, free: int) -> bool | None:
        return check_targets({"t": incoming}, {"t": DiskSpace(free, capacity, "declared")})[0].fits

    assert fits(incoming + more, free) <= fits(incoming, free)
    assert fits(incoming, free + more) >= fits(incoming, free)
    shared = DiskSpace(free, capacity, "declared", volume="v")
    assert check_targets({"t": incoming, "u": more}, {"t": shared, "u": shared})[0].fits <= fits(incoming, free)


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_the_local_stack_measures_its_own_servers_filesystem_and_no_other(tmp_path: Path) -> None:
    """States written by hand (nothing started): a plain stack whose servers are 0 and 2, and an HA stack of two
    Patroni pairs. A server is the stack's by host and port; a pair's two members each hold a copy."""
    binaries = {"bin_dir": "/nonexistent", "version": "15", "source": "test"}
    plain = StackLayout(tmp_path / "plain")
    plain.save_state(
        StackState(str(tmp_path / "plain" / "pg"), None, binaries, 7000, [7001, 7002], 7003, server_ids=[0, 2])
    )
    space = StackDiskSpace(plain).measure("server-2", "host=localhost port=7002 dbname=tessera user=someone")
    assert space is not None
    usage = shutil.disk_usage(tmp_path)
    assert (space.capacity_bytes, space.copies, space.volume) == (usage.total, 1, str(os.stat(tmp_path).st_dev))
    assert space.source == f"filesystem of {tmp_path / 'plain'}"  # shard2/ is not there: its nearest folder
    assert StackDiskSpace(plain).measure("server-9", "host=127.0.0.1 port=7009 dbname=tessera") is None
    assert StackDiskSpace(plain).measure("remote", "host=db.example port=7002 dbname=tessera") is None
    assert StackDiskSpace(StackLayout(tmp_path / "none")).measure("server-0", "host=127.0.0.1 port=7001") is None

    ha = StackLayout(tmp_path / "ha")
    members = [[[7101, 7201], [7102, 7202]], [[7103, 7203], [7104, 7204]]]
    ha_state = {"root": str(tmp_path / "ha" / "pg"), "replicas": 1, "etcd_client_port": 7300, "etcd_peer_port": 7301}
    ha.save_state(
        StackState(str(tmp_path / "ha" / "pg"), None, binaries, 7100, [], 7302, ha={**ha_state, "members": members})
    )
    pair = StackDiskSpace(ha).measure("server-1", "host=127.0.0.1,127.0.0.1 port=7103,7104 dbname=tessera")
    assert pair is not None
    assert pair.copies == 2
    assert StackDiskSpace(ha).measure("server-1", "host=127.0.0.1 port=7103 dbname=tessera") is None  # one member


# --- on a real stack -------------------------------------------------------------------------------------------------


@dataclass
class Grown:
    """Two servers holding the rows, ``server-2`` added empty."""

    settings: TesseraSettings
    catalog: str
    env: dict[str, str]
    maps: ShardMapStore


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grown]:
    root = tmp_path_factory.mktemp("disk_check")
    with private_stack(root, 2) as (stack, settings):
        with FeatureStore.open(settings) as store:
            store.write("disk_v1", make_rows(20_000, prefix="d"))
        stack.add_servers(1)
        catalog = settings.catalog_dsn or ""
        env = {**os.environ, "TESSERA_DATA_DIR": str(root), "TESSERA_CATALOG_DSN": catalog}
        yield Grown(settings, catalog, env, ShardMapStore(catalog))


def shardctl(grown: Grown, *args: str) -> tuple[int, str]:
    result = CliRunner(env=grown.env).invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def databases_size(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0])


def wal_size(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT sum(size) FROM pg_ls_waldir()").fetchone()[0])


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_a_target_declared_too_small_refuses_plan_and_run_and_nothing_changes(grown: Grown) -> None:
    new = grown.maps.registered_servers()["server-2"]
    capacity = databases_size(new) + wal_size(new) + 1_000_000  # 1 MB free, less than the 10 % reserve alone
    declared = str(capacity)  # plain bytes, declared as the server is registered again (same DSN)
    code, said = shardctl(grown, "servers", "add", "server-2", "--dsn", new, "--disk-capacity", declared)
    assert code == 0, said
    assert f"disk capacity {format_bytes(capacity)} declared" in said
    listed = json.loads(shardctl(grown, "servers", "list", "--json")[1])
    assert {s["name"]: s["disk_capacity_bytes"] for s in listed["servers"]}["server-2"] == capacity
    Journal(grown.catalog).ensure_schema()
    epoch_before, latest_before = grown.maps.current(), Journal(grown.catalog).latest()

    for command in (["plan"], ["plan", "--json"], ["run"]):
        code, said = shardctl(grown, "migrate", *command, "--add-server", "server-2")
        assert code == 1, said
        lines = said.strip().splitlines()
        assert len(lines) == 1, said
        assert lines[0].startswith("Error: server-2 needs ")
        assert "for the copy (both copies exist until cleanup)" in lines[0]
        assert re.search(r"kept free, but has \d+(\.\d)? [kM]?B free", lines[0]), said
        assert lines[0].endswith(
            f"(of {format_bytes(capacity)}, declared): give it more disk and declare it with 'shardctl servers disk "
            "server-2 --capacity ...', or add servers to the target so each receives less"
        )

    assert grown.maps.current() == epoch_before  # no epoch published
    assert Journal(grown.catalog).latest() == latest_before  # no migration journaled
    assert Journal(grown.catalog).running() is None


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_bad_sizes_and_unknown_servers_are_one_clear_line(grown: Grown) -> None:
    code, said = shardctl(grown, "servers", "disk", "server-2", "--capacity", "lots")
    assert code == 2
    assert "not a size: 'lots' (e.g. 500GB, 40GiB, 50Gi, 1.5TB or a number of bytes)" in said
    code, said = shardctl(grown, "servers", "disk", "server-2")
    assert code == 2
    assert "exactly one of --capacity SIZE, --clear" in said
    code, said = shardctl(grown, "servers", "disk", "nope-1", "--capacity", "1TB")
    assert (code, said.strip()) == (1, "Error: unknown server nope-1: register it first with `shardctl servers add`")
    with pytest.raises(ShardMapError, match="at least 1 byte"):
        grown.maps.set_disk_capacity("server-2", 0)


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_an_older_catalog_gains_the_column_with_nothing_declared(grown: Grown) -> None:
    with psycopg.connect(grown.catalog, autocommit=True) as conn:
        conn.execute("ALTER TABLE tessera_servers DROP COLUMN IF EXISTS disk_capacity_bytes")
    assert set(grown.maps.disk_capacities().values()) == {None}
    grown.maps.ensure_schema()
    assert set(grown.maps.disk_capacities().values()) == {None}
    grown.maps.set_disk_capacity("server-2", parse_size("1TB"))
    assert grown.maps.disk_capacities()["server-2"] == 10**12


@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_with_room_the_plan_reports_each_targets_need_and_free_space_and_the_run_fits(grown: Grown) -> None:
    maps = grown.maps
    new = maps.registered_servers()["server-2"]

    # Nothing declared: the stack's own filesystem.
    assert shardctl(grown, "servers", "disk", "server-2", "--clear")[0] == 0
    code, said = shardctl(grown, "migrate", "plan", "--json", "--add-server", "server-2")
    assert code == 0, said
    plan = json.loads(said)
    (disk,) = plan["disk"]
    assert disk["server"] == "server-2"
    assert disk["incoming_bytes"] == sum(p["bytes"] for p in plan["pairs"]) > 0
    with psycopg.connect(new) as conn:
        max_wal = conn.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()[0]
    assert disk["wal_bytes"] == min(disk["incoming_bytes"], max_wal)
    assert disk["needed_bytes"] == math.ceil(disk["incoming_bytes"] * HEADROOM) + disk["wal_bytes"]
    assert disk["source"].startswith("filesystem of ")
    measured = shutil.disk_usage(disk["source"].removeprefix("filesystem of "))
    assert disk["capacity_bytes"] == measured.total
    assert abs(disk["free_bytes"] - measured.free) < 10**9  # other writers share the machine's disk
    assert disk["fits"] is True

    # Declared above what the filesystem has: the filesystem still decides. Declared below it: the declaration.
    assert shardctl(grown, "servers", "disk", "server-2", "--capacity", "1PB")[0] == 0
    assert json.loads(shardctl(grown, "migrate", "plan", "--json", "--add-server", "server-2")[1])["disk"][0][
        "source"
    ].startswith("filesystem of ")
    assert shardctl(grown, "servers", "disk", "server-2", "--capacity", "2GB")[0] == 0
    code, said = shardctl(grown, "migrate", "plan", "--add-server", "server-2")
    assert code == 0, said
    line = next(x for x in said.splitlines() if x.strip().startswith("disk of server-2:"))
    assert "of 2.0 GB (declared), 200.0 MB kept free: fits" in line
    assert f"needs {format_bytes(disk['needed_bytes'])}" in line

    before = databases_size(new)
    code, said = shardctl(grown, "migrate", "run", "--add-server", "server-2")
    assert code == 0, said
    assert "disk of server-2: needs" in said
    grown_by = databases_size(new) - before
    assert 0 < grown_by <= disk["needed_bytes"], (grown_by, disk)
