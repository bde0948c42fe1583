"""`shardctl ha restart|reinit MEMBER` and `stack up` bring a member back from the states a kill leaves
(a Postgres outliving its Patroni, a postmaster.pid naming a live stranger, a clone cut short), and
`shardctl ha status` calls a shard without its synchronous replica degraded, saying what commits do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shardctl.control.ha import MemberStatus, leader, shard_members
from shardctl.process import pid_alive, wait_until
from shardctl.stack.ha import leftovers
from shardctl.stack.ha.cluster import HACluster, PatroniMember
from shardctl.stack.ha.health import DEGRADED, DOWN, HEALTHY, sync_standby_gauges, verdict
from shardctl.stack.manager import Stack
from testkit.ha.drill import AckWriter, ensure_probe_table, wait_healthy


def _shardctl(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli", *args, "--data-dir", str(stack.data_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        input=stdin,
        check=False,
        timeout=300,
    )


def _replica(cluster: HACluster) -> PatroniMember:
    return cluster.member(next(m.name for m in shard_members(0, cluster.api_urls(0)) if m.role == "sync_standby"))


def _primary(cluster: HACluster) -> str:
    return next(m.name for m in shard_members(0, cluster.api_urls(0)) if m.role == "leader")


def _assert_sync_standby(cluster: HACluster, name: str) -> None:
    members = {m.name: m for m in wait_healthy(cluster, 0)}
    assert members[name].role == "sync_standby"
    assert members[name].state == "streaming"


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def _m(name: str, role: str, state: str) -> MemberStatus:
    return MemberStatus(0, name, role, state, 1, 1, 0, "")


@pytest.mark.req("JTBD-04.degraded")
def test_the_verdict_names_degraded_mode_and_what_commits_do() -> None:
    leader, sync = _m("shard0-m0", "leader", "running"), _m("shard0-m1", "sync_standby", "streaming")
    assert verdict(0, [leader, sync], 2, True, False).state == HEALTHY
    alone = verdict(0, [leader], 2, True, False)
    assert (alone.state, alone.reason) == (DEGRADED, "no synchronous replica")
    assert "RPO = 0 does not hold" in alone.commits
    assert "block" in verdict(0, [leader], 2, True, True).commits
    assert verdict(0, [sync], 2, True, False).state == DOWN
    # Two replicas, the sync one streaming, the other gone: degraded, RPO still holds.
    third = verdict(0, [leader, sync], 3, True, False)
    assert third.state == DEGRADED
    assert "shard0-m2" in third.reason
    assert "shard0-m1" in third.commits


@pytest.mark.req("JTBD-04.degraded")
def test_status_says_degraded_and_what_commits_do_while_the_replica_is_gone(
    ha_stack: Stack, cluster: HACluster
) -> None:
    replica = _replica(cluster)

    # Each member reports its own view of the sync key, refreshed once per Patroni loop: after a test that moved
    # the primary it may lag the cluster's state the fixture waited for.
    def one_sync_standby() -> bool:
        return sum(sync_standby_gauges(cluster.api_urls(0)).values()) == 1

    assert wait_until(one_sync_standby, 15, 0.2), sync_standby_gauges(cluster.api_urls(0))
    replica.kill()
    try:
        assert wait_until(lambda: _shardctl(ha_stack, "ha", "status").returncode == 1, 30, 0.5)
        text = _shardctl(ha_stack, "ha", "status")
        assert "shard 0: degraded (no synchronous replica)" in text.stdout
        assert "RPO = 0 does not hold" in text.stdout
        as_json = _shardctl(ha_stack, "ha", "status", "--json")
        assert as_json.returncode == 1
        (shard,) = json.loads(as_json.stdout)["shards"]
        assert shard["state"] == "degraded"
        assert shard["synchronous_mode_strict"] is False
        # The metric an operator alerts on: no member reports itself the sync standby.
        assert sum(sync_standby_gauges(cluster.api_urls(0)).values()) == 0
    finally:
        healed = _shardctl(ha_stack, "ha", "restart", replica.name, "--force")
    assert healed.returncode == 0, healed.stderr
    _assert_sync_standby(cluster, replica.name)
    assert _shardctl(ha_stack, "ha", "status").returncode == 0
    assert sum(sync_standby_gauges(cluster.api_urls(0)).values()) == 1


@pytest.mark.req("JTBD-04.heal")
def test_restart_brings_back_a_member_whose_patroni_was_killed_under_its_running_postgres(
    ha_stack: Stack, cluster: HACluster
) -> None:
    replica = _replica(cluster)
    patroni, postgres = replica.patroni_pid(), replica.postgres_pid()
    assert patroni is not None
    assert postgres is not None
    os.kill(patroni, signal.SIGKILL)  # its Postgres runs on, its patroni.pid goes stale
    wait_until(lambda: not pid_alive(patroni), 10)
    result = _shardctl(ha_stack, "ha", "restart", replica.name, "--force")
    assert result.returncode == 0, result.stderr
    assert "started Patroni again" in result.stdout
    _assert_sync_standby(cluster, replica.name)
    assert not pid_alive(postgres), "the leftover postmaster was not replaced"


@pytest.mark.req("JTBD-04.heal")
def test_restart_ignores_a_postmaster_pid_file_naming_a_live_stranger(ha_stack: Stack, cluster: HACluster) -> None:
    replica = _replica(cluster)
    replica.kill()
    wait_until(lambda: replica.postgres_pid() is None, 10)
    # PID reuse: the file now names a live process that is not this member's postmaster (ours).
    (replica.plan.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{replica.plan.data_dir}\n")
    result = _shardctl(ha_stack, "ha", "restart", replica.name, "--force")
    assert result.returncode == 0, result.stderr
    _assert_sync_standby(cluster, replica.name)


@pytest.mark.req("JTBD-04.heal")
@pytest.mark.req("JTBD-04.rejoin")
def test_stack_up_brings_back_a_member_killed_mid_clone(ha_stack: Stack, cluster: HACluster) -> None:
    replica = _replica(cluster)
    replica.kill()
    wait_until(lambda: replica.postgres_pid() is None, 10)
    # pg_basebackup writes pg_control last: a clone cut short has files but no control file.
    (replica.plan.data_dir / "global" / "pg_control").unlink()
    result = _shardctl(ha_stack, "stack", "up")
    assert result.returncode == 0, result.stderr
    _assert_sync_standby(cluster, replica.name)


@pytest.mark.req("JTBD-04.heal")
def test_reinit_clones_a_replica_again_and_refuses_the_primary(ha_stack: Stack, cluster: HACluster) -> None:
    replica = _replica(cluster)
    marker = replica.plan.data_dir / "tessera-reinit-marker"
    marker.write_text("from before the reinit\n")
    unconfirmed = _shardctl(ha_stack, "ha", "reinit", replica.name, stdin="")
    assert unconfirmed.returncode == 1
    assert marker.exists()
    result = _shardctl(ha_stack, "ha", "reinit", replica.name, "--force")
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "the data directory was not cloned again"
    _assert_sync_standby(cluster, replica.name)

    primary = _primary(cluster)
    _one_line_error(_shardctl(ha_stack, "ha", "reinit", primary, "--force"), "is the primary", "switchover")
    _one_line_error(_shardctl(ha_stack, "ha", "restart", "shard9-m9", "--force"), "no member")
    assert _primary(cluster) == primary


def _process_name(pid: int) -> str | None:
    """The kernel's name of a process (its program's file name), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _freeze_pg_rewind(member: PatroniMember, caught: list[int], timeout: float = 60.0) -> None:
    """SIGSTOP the member's pg_rewind as soon as it appears (it runs for well under a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in leftovers.processes_naming(member.plan.data_dir):
            if _process_name(pid) == "pg_rewind":
                os.kill(pid, signal.SIGSTOP)
                caught.append(pid)
                return
        time.sleep(0.005)


@pytest.mark.req("JTBD-04.heal")
def test_restart_brings_back_an_old_primary_killed_mid_rewind(ha_stack: Stack, cluster: HACluster) -> None:
    """The old primary's Patroni dies while its pg_rewind runs; the pg_rewind is left behind, stopped, holding
    the data directory. `ha restart` clears it and the member rejoins as sync standby."""
    dsn = cluster.shard_dsn(0)
    ensure_probe_table(dsn)
    writer = AckWriter(dsn).start()  # commits in flight at the kill leave WAL the new timeline lacks
    old = cluster.member(_primary(cluster))
    old.kill()
    moved = wait_until(lambda: (new := leader(shard_members(0, cluster.api_urls(0)))) and new.name != old.name, 60)
    writer.stop()
    assert moved, "no failover"
    caught: list[int] = []
    watcher = threading.Thread(target=_freeze_pg_rewind, args=(old, caught))
    watcher.start()
    cluster.start_member(old)  # Patroni rewinds the old primary onto the new timeline
    watcher.join()
    try:
        assert caught, "pg_rewind never ran"
        patroni = old.patroni_pid()
        assert patroni is not None
        os.kill(patroni, signal.SIGKILL)
        result = _shardctl(ha_stack, "ha", "restart", old.name, "--force")
        assert result.returncode == 0, result.stderr
        _assert_sync_standby(cluster, old.name)
        assert not pid_alive(caught[0]), "the stopped pg_rewind was left behind"
    finally:
        for pid in caught:  # never leave a stopped process behind, even when the test fails
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
