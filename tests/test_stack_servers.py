"""`shardctl stack up --servers N` adds empty servers to a running stack (schema applied, registered in the
catalog, placement untouched), `stack status` shows each server's logical shards, and `stack remove-server`
removes a server only once no logical shard (and no row) is left on it. Real servers throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from shardctl.process import pid_alive
from shardctl.stack.manager import Stack
from shardctl.store.shardmap import ShardMapError, ShardMapStore
from tests.conftest import _random_base_port


def _shardctl(*args: str, settings_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; with ``settings_file``, against that stack's catalog (commands that take no --data-dir)."""
    env = dict(os.environ)
    if settings_file is not None:
        env["TESSERA_SETTINGS_FILE"] = str(settings_file)
        env.pop("TESSERA_CATALOG_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def _listed_servers(stack: Stack) -> tuple[set[str], str]:
    """`shardctl servers list`: the names its ``--json`` gives, and its table."""
    as_json = _shardctl("servers", "list", "--json", settings_file=stack.settings_file)
    assert as_json.returncode == 0, as_json.stderr
    table = _shardctl("servers", "list", settings_file=stack.settings_file)
    assert table.returncode == 0, table.stderr
    return {row["name"] for row in json.loads(as_json.stdout)["servers"]}, table.stdout


@pytest.fixture
def one_server_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own with one server, stopped by PID and purged at the end."""
    stack = Stack(tmp_path / "growing")
    stack.up(servers=1, base_port=_random_base_port())
    try:
        yield stack
    finally:
        assert stack.down(purge=True) == []


def _status(stack: Stack) -> dict[str, dict]:
    result = _shardctl("stack", "status", "--json", "--data-dir", str(stack.data_dir))
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.mark.req("PLAT.migrate-cli")
def test_up_adds_empty_registered_servers_and_remove_server_refuses_a_placed_one(one_server_stack: Stack) -> None:
    stack = one_server_stack
    state = stack.load_state()
    assert state is not None
    catalog = stack.postgres_servers(state)[0].dsn()
    before = ShardMapStore(catalog).current()
    running_before = stack.pids()

    grown = _shardctl("stack", "up", "--servers", "3", "--data-dir", str(stack.data_dir))
    assert grown.returncode == 0, grown.stderr
    assert "server-2 added, empty: `shardctl migrate run --add-server server-2`" in grown.stdout
    state = stack.load_state()
    assert state is not None
    assert stack.server_names(state) == ["server-0", "server-1", "server-2"]
    assert set(running_before) <= set(stack.pids()), "adding servers restarted none of the running ones"
    settings_file = json.loads(stack.settings_file.read_text())
    recorded = {entry["name"]: entry["dsn"] for entry in settings_file["servers"]}
    assert list(recorded) == ["server-0", "server-1", "server-2"]
    maps = ShardMapStore(catalog)
    registered = {name: conninfo_to_dict(dsn) for name, dsn in maps.registered_servers().items()}
    assert registered == {name: conninfo_to_dict(dsn) for name, dsn in recorded.items()}
    after = maps.current()
    assert after.epoch == before.epoch, "`up` never moves a logical shard"
    assert after.placement == before.placement
    for name in ("server-1", "server-2"):
        with psycopg.connect(recorded[name]) as conn:
            assert conn.execute("SELECT count(*) FROM entity_features").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM tessera_schema_migrations").fetchone()[0] >= 2  # type: ignore[index]
    rows = _status(stack)
    assert {n: rows[n]["logical_shards"] for n in ("server-0", "server-1", "server-2")} == {
        "server-0": 256,
        "server-1": 0,
        "server-2": 0,
    }
    assert all(rows[n]["healthy"] for n in ("server-0", "server-1", "server-2"))
    names, table = _listed_servers(stack)
    assert names == {"server-0", "server-1", "server-2"}
    assert "server-1" in table

    fewer = _shardctl("stack", "up", "--servers", "2", "--data-dir", str(stack.data_dir))
    placed = _shardctl("stack", "remove-server", "server-0", "--data-dir", str(stack.data_dir))
    unknown = _shardctl("stack", "remove-server", "server-9", "--data-dir", str(stack.data_dir))
    for result, message in (
        (fewer, "already has 3 servers"),
        (placed, "server-0 holds 256 logical shards"),
        (unknown, "no server 'server-9'"),
    ):
        assert result.returncode == 1, result
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert len(stack.server_names(stack.load_state())) == 3  # type: ignore[arg-type]

    with psycopg.connect(recorded["server-2"]) as conn:  # a stray row: the server is not empty
        conn.execute(
            "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts, version) "
            "VALUES (1, 'stray', 'fs', '{}', now(), 1)"
        )
    stray = _shardctl("stack", "remove-server", "server-2", "--data-dir", str(stack.data_dir))
    assert stray.returncode == 1
    assert "still has 1 rows" in stray.stderr, stray.stderr

    server1 = stack.postgres_servers(state)[2]
    pid = server1.pid()
    removed = _shardctl("stack", "remove-server", "server-1", "--data-dir", str(stack.data_dir))
    assert removed.returncode == 0, removed.stderr
    assert not pid_alive(pid)
    assert not server1.data_dir.exists()
    state = stack.load_state()
    assert state is not None
    assert stack.server_names(state) == ["server-0", "server-2"]
    settings_file = json.loads(stack.settings_file.read_text())
    assert [e["name"] for e in settings_file["servers"]] == ["server-0", "server-2"]
    listed = _status(stack)
    assert "server-0" in listed
    assert "server-2" in listed
    assert "server-1" not in listed
    # The catalog forgot it too: `servers list` (both forms) no longer offers it, and the registry has no row.
    names, table = _listed_servers(stack)
    assert names == {"server-0", "server-2"}
    assert "server-1" not in table
    assert "server-0" in table
    assert set(ShardMapStore(catalog).registered_servers()) == {"server-0", "server-2"}
    # The catalog itself refuses to forget a server the placement still uses, whoever asks.
    with pytest.raises(ShardMapError, match=r"server-0 holds 256 logical shards"):
        ShardMapStore(catalog).unregister_server("server-0")
    assert "server-0" in ShardMapStore(catalog).registered_servers()
