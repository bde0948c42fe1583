"""`shardctl stack up --ha`: per shard a Patroni cluster of a primary and a synchronous replica with etcd,
never as root, reachable through a multi-host DSN; `shardctl ha status|switchover` with clear errors."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from shardctl.control.ha import leader, shard_members
from shardctl.settings import load_settings
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from testkit.ha.drill import wait_healthy


def _shardctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli", *args], capture_output=True, text=True, env=dict(os.environ), check=False
    )


@pytest.mark.req("JTBD-04.replica")
@pytest.mark.req("JTBD-04.patroni-etcd")
def test_each_shard_is_a_patroni_primary_with_a_streaming_replica_not_as_root(
    ha_stack: Stack, cluster: HACluster
) -> None:
    members = shard_members(0, cluster.api_urls(0))
    assert sorted(m.role for m in members) == ["leader", "sync_standby"]
    assert all(m.state in ("running", "streaming") for m in members)
    assert cluster.etcd.healthy()
    # As root, Patroni and Postgres run as the unprivileged server user; otherwise as ourselves.
    expected_uid = pwd.getpwnam(cluster.user).pw_uid if cluster.user is not None else os.geteuid()
    assert (cluster.user is not None) == (os.geteuid() == 0)
    for member in cluster.members(0):
        for pid in (member.patroni_pid(), member.postgres_pid()):
            assert pid is not None
            assert psutil.Process(pid).uids().real == expected_uid
    rows = {r.name: r for r in ha_stack.status()}
    assert {"etcd", "shard0-m0", "shard0-m1"} <= set(rows)
    assert all(rows[n].healthy for n in ("etcd", "shard0-m0", "shard0-m1"))


@pytest.mark.req("JTBD-04.client-failover")
def test_settings_hold_a_multi_host_dsn_that_lands_on_the_primary(ha_stack: Stack, cluster: HACluster) -> None:
    os.environ["TESSERA_SETTINGS_FILE"] = str(ha_stack.settings_file)
    try:
        settings = load_settings()
    finally:
        del os.environ["TESSERA_SETTINGS_FILE"]
    (dsn,) = settings.shard_dsns()
    assert "target_session_attrs=read-write" in dsn
    primary = leader(shard_members(0, cluster.api_urls(0)))
    assert primary is not None
    with psycopg.connect(dsn) as conn:
        assert conn.info.port == primary.port
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("SELECT tessera_shard_for('e1', 4)").fetchone() is not None


@pytest.mark.req("JTBD-04.sync-commit")
def test_primary_commits_wait_for_a_synchronous_replica(cluster: HACluster) -> None:
    with psycopg.connect(cluster.shard_dsn(0)) as conn:
        names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        states = conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall()
        commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
    assert names, "synchronous_standby_names is empty: commits would not wait for the replica"
    assert [s for _, s in states] == ["sync"]
    assert commit == "on"


@pytest.mark.req("JTBD-04.ha-cli")
def test_cli_status_json_and_switchover_then_clear_errors(ha_stack: Stack, cluster: HACluster, tmp_path: Path) -> None:
    data_dir = str(ha_stack.data_dir)
    status = _shardctl("ha", "status", "--json", "--data-dir", data_dir)
    assert status.returncode == 0, status.stderr
    (shard,) = json.loads(status.stdout)["shards"]
    assert shard["state"] == "healthy"
    rows = shard["members"]
    assert {r["role"] for r in rows} == {"leader", "sync_standby"}
    assert all(r["timeline"] >= 1 for r in rows)
    old = next(r["name"] for r in rows if r["role"] == "leader")

    switched = _shardctl("ha", "switchover", "0", "--data-dir", data_dir)
    assert switched.returncode == 0, switched.stderr
    members = wait_healthy(cluster, 0)
    assert leader(members).name != old

    errors = [
        _shardctl("ha", "switchover", "7", "--data-dir", data_dir),
        _shardctl("ha", "switchover", "0", "--candidate", "nobody", "--data-dir", data_dir),
        _shardctl("ha", "status", "--data-dir", str(tmp_path / "no-stack")),
        _shardctl("stack", "up", "--servers", "1", "--data-dir", data_dir, "--replicas", "2"),
        _shardctl("stack", "up", "--servers", "1", "--data-dir", data_dir, "--replicas", "1"),
    ]
    for result in errors[:4]:
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no shard 7" in errors[0].stderr
    assert "nobody" in errors[1].stderr
    assert "no stack" in errors[2].stderr
    assert "runs 1 replicas per server" in errors[3].stderr
    assert errors[4].returncode == 0, errors[4].stderr  # up again on a running HA stack is a no-op


@pytest.mark.req("JTBD-04.ha-cli")
def test_ha_commands_on_a_plain_stack_say_so_and_change_nothing(local_stack: Stack) -> None:
    before = local_stack.pids()
    for args in (("stack", "up", "--ha"), ("ha", "status"), ("ha", "switchover", "0")):
        result = _shardctl(*args, "--data-dir", str(local_stack.data_dir))
        assert result.returncode == 1, result
        assert "runs without HA" in result.stderr
        assert "Traceback" not in result.stderr
    assert local_stack.pids() == before
