"""A member killed with SIGKILL (Patroni and its PostgreSQL) comes back as a synchronous standby through the
user's own command, `shardctl stack up`: the shard must not go on running without its replica (issue seen:
`stack up` failed with "Patroni exited during start", quoting the dead Patroni's log)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shardctl.control.ha import leader, shard_members
from shardctl.process import wait_until
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from testkit.ha.drill import wait_healthy


@pytest.mark.req("JTBD-04.rejoin")
@pytest.mark.parametrize("role", ["sync_standby", "leader"])
def test_a_killed_member_comes_back_as_sync_standby_with_stack_up(
    ha_stack: Stack, cluster: HACluster, role: str
) -> None:
    victim = next(m for m in shard_members(0, cluster.api_urls(0)) if m.role == role)
    cluster.member(victim.name).kill()
    if role == "leader":  # the user waits for the failover, as after any primary loss
        assert wait_until(
            lambda: (new := leader(shard_members(0, cluster.api_urls(0)))) is not None and new.name != victim.name,
            60,
        ), "no failover to the replica"
    up = subprocess.run(
        [sys.executable, "-m", "shardctl.cli", "stack", "up", "--data-dir", str(ha_stack.data_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
        timeout=300,
    )
    assert up.returncode == 0, up.stderr
    members = {m.name: m for m in wait_healthy(cluster, 0)}
    assert members[victim.name].role == "sync_standby"
    assert members[victim.name].state == "streaming"
