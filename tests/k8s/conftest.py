"""Fixtures of the k8s tests: the rendered manifests, the Secrets generate-secrets.sh makes, and a cluster
stand-in whose Services lead to a stack of this module's own (its catalog gets a promoted model)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardctl.process import free_port
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import SUPERUSER
from tests.k8s.netns import Endpoint
from tests.k8s.pods import Cluster
from tests.k8s.render import render
from tests.k8s.secrets import Generated, generate_secrets
from tests.serving.conftest import trained  # noqa: F401 (the session's tiny H2O models, trained once)


@pytest.fixture(scope="session")
def rendered() -> list[dict]:
    return render()


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate_secrets(tmp_path_factory.mktemp("secrets"))


@pytest.fixture(scope="module")
def k8s_stack(
    tmp_path_factory: pytest.TempPathFactory, generated: Generated
) -> Iterator[tuple[Stack, TesseraSettings]]:
    """A stack of the module's own: the tests register and promote a model in its catalog. Its superuser has the
    generated Secret's password, so the Jobs log in as they would as Patroni's superuser."""
    if os.geteuid() != 0:
        pytest.fail("the container tests need root (network and mount namespaces, setpriv)")
    root = tmp_path_factory.mktemp("k8s_stack")
    root.chmod(0o755)
    stack = Stack(root)
    superuser_password = generated.secrets["tessera-postgres"]["superuser-password"]
    stack.layout.secrets.preset_pg_password(SUPERUSER, superuser_password)
    stack.up(shards=2, base_port=free_port(block=10))
    try:
        yield stack, TesseraSettings(**json.loads(stack.settings_file.read_text()))
    finally:
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"


def route_to_stack(cluster: Cluster, stack: Stack) -> None:
    """The Services of the rendered manifests that lead to the stack's servers: each Patroni cluster's Postgres
    and Redis. etcd and Patroni's REST API have nothing behind them here (no container of ours uses them). The
    stack's catalog lists its servers at 127.0.0.1:port (in a cluster: the Service names), so a pod reaches
    those too."""
    state = stack.load_state()
    assert state is not None, "the stack is not up"
    local = "127.0.0.1"
    cluster.route("catalog-pg", {5432: Endpoint(local, state.catalog_port)})
    for index, port in enumerate(state.shard_ports):
        cluster.route(f"shard{index}-pg", {5432: Endpoint(local, port)})
    cluster.route("redis", {6379: Endpoint(local, state.redis_port)})
    cluster.loopback = [state.catalog_port, *state.shard_ports]


@pytest.fixture
def make_cluster(tmp_path: Path, generated: Generated) -> Iterator:
    """Build clusters from rendered docs; every pod and namespace is stopped and removed at the end."""
    made: list[Cluster] = []

    def make(docs: list[dict], name: str = "cluster") -> Cluster:
        folder = tmp_path / name
        folder.mkdir()
        folder.chmod(0o755)
        cluster = Cluster(docs, generated.secrets, folder)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
