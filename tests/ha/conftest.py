"""One real HA stack (etcd + a Patroni cluster of a primary and one replica for one shard) shared by the
HA tests; every scenario leaves it healthy for the next, and the stack is stopped by PID at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardctl.process import pid_alive
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from testkit.ha.drill import wait_healthy
from tests.conftest import _random_base_port
from tests.serving.conftest import trained  # noqa: F401 (the session's tiny H2O models, for the scorer's test)


@pytest.fixture(scope="session")
def ha_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("ha-stack"))
    stack.up(shards=1, base_port=_random_base_port(), ha=True, replicas=1)
    pids: set[int] = set()
    try:
        yield stack
    finally:
        pids = set(stack.pids())
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"
        assert [p for p in pids if pid_alive(p)] == []


@pytest.fixture
def cluster(ha_stack: Stack) -> HACluster:
    """The HA shards, healthy (leader + streaming sync replica) at the start of each test."""
    state = ha_stack.load_state()
    assert state is not None
    ha = ha_stack.ha_cluster(state)
    assert ha is not None
    wait_healthy(ha, 0)
    return ha
