"""`shardctl stack up|status|down|remove-server`: the catalog Postgres, N servers (plain Postgres, or with
``--ha`` Patroni pairs) and a Redis, each on a port of its own under the data dir, with the resulting
topology written where the settings read it. `up --servers N` on a running stack adds the missing servers
and registers them in the catalog; it never changes the placement of logical shards (only `shardctl
migrate` does), so an added server stays empty until a migration moves logical shards onto it.

``Stack`` is the one object the CLI, tests and benchmarks hold; each job is a module of its own, which it
calls: ``layout`` (the state and settings files, the servers, ports and folders a state describes),
``lifecycle`` (start and stop), ``status`` (health and placement per server) and ``topology`` (add and
remove servers)."""

from __future__ import annotations

from pathlib import Path

from shardctl.stack import lifecycle, topology
from shardctl.stack import status as stack_status
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.layout import STATE_FILE_NAME, StackError, StackLayout, StackState
from shardctl.stack.postgres import PostgresServer
from shardctl.stack.redis_server import RedisServer
from shardctl.stack.status import ServerStatus

__all__ = ["STATE_FILE_NAME", "ServerStatus", "Stack", "StackError", "StackState"]


class Stack:
    """The local stack rooted at ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        postgres_bin_dir: str | None = None,
        run_as_user: str | None = None,
        ha_settings: HASettings | None = None,
        java_home: str | None = None,
        default_shards: int = 2,
        ha_proxied: bool = False,
    ):
        self.layout = StackLayout(
            data_dir, postgres_bin_dir, run_as_user, ha_settings or HASettings(), java_home, ha_proxied
        )
        self.default_shards = default_shards

    # -- where things are (layout) ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir

    @property
    def state_file(self) -> Path:
        return self.layout.state_file

    @property
    def settings_file(self) -> Path:
        return self.layout.settings_file

    def load_state(self) -> StackState | None:
        return self.layout.load_state()

    def postgres_servers(self, state: StackState) -> list[PostgresServer]:
        """The catalog first, then shards in index order."""
        return self.layout.postgres_servers(state)

    server_ids = staticmethod(StackLayout.server_ids)

    def server_names(self, state: StackState) -> list[str]:
        return self.layout.server_names(state)

    def ha_cluster(self, state: StackState) -> HACluster | None:
        """The HA shards (etcd + Patroni clusters), or None for a plain stack."""
        return self.layout.ha_cluster(state)

    def redis_server(self, state: StackState) -> RedisServer:
        return self.layout.redis_server(state)

    # -- commands --------------------------------------------------------------------------------------
    def up(
        self,
        servers: int | None = None,
        base_port: int = 15432,
        ha: bool = False,
        replicas: int | None = None,
        *,
        shards: int | None = None,
        tls: bool = False,
    ) -> StackState:
        """Start whatever is not running; harmless when everything already is. ``shards`` is the deprecated
        name of ``servers``.

        With ``ha`` each server is a Patroni cluster of a primary and ``replicas`` replicas, with etcd. On a
        stack with fewer than ``servers`` servers, the missing ones are added (`add_servers`). With ``tls`` (a
        new stack's choice) the servers take TLS only and every DSN written verifies them (``shardctl.stack.tls``).
        """
        servers = servers if servers is not None else shards
        state = self.layout.load_state()
        lifecycle.refuse_unsupported_up(self.layout, state, servers, ha, replicas, tls)
        if state is None:
            kind = {"ha": ha or replicas is not None, "replicas": replicas, "tls": tls}
            planned = self.layout.plan(servers or self.default_shards, base_port, **kind)
            return lifecycle.start(self.layout, planned, fresh=True)
        if servers is not None and servers > self.layout.shard_count(state):
            return self.add_servers(servers - self.layout.shard_count(state))
        return lifecycle.start(self.layout, state, fresh=False)

    def start_scorer(self) -> StackState:
        """Start the precomputing scorer on the running stack (`stack up` does unless told not to); `down` stops
        it by PID."""
        state = self.layout.load_state()
        if state is None:
            raise StackError(f"no stack in {self.data_dir}: run `shardctl stack up`")
        return lifecycle.start_scorer(self.layout, state)

    def plan(self, shards: int, base_port: int, ha: bool = False, replicas: int | None = None) -> StackState:
        """Lay out a new stack and save it without starting anything; a later `up` starts it. Fault-injection
        runs use the gap to start the proxies their members will talk through."""
        return lifecycle.plan(self.layout, shards, base_port, ha, replicas)

    def down(self, purge: bool = False) -> list[str]:
        """Stop every server by PID; with ``purge`` also delete their data. Returns what failed to stop."""
        return lifecycle.down(self.layout, purge)

    def pids(self) -> list[int]:
        """Every PID the stack is running now (for tests and `down` verification)."""
        state = self.layout.load_state()
        return [] if state is None else lifecycle.running_pids(self.layout, state)

    def status(self) -> list[ServerStatus]:
        return stack_status.status(self.layout)

    def placement_counts(self, state: StackState) -> dict[str, int] | None:
        """Logical shards per server name in the catalog's current placement; None when it cannot be read."""
        return stack_status.placement_counts(self.layout, state)

    def add_servers(self, count: int) -> StackState:
        """Add ``count`` empty servers to the running stack (``topology.add_servers``)."""
        return topology.add_servers(self.layout, count)

    def remove_server(self, name: str) -> StackState:
        """Remove the empty server ``name`` from the stack and the catalog (``topology.remove_server``)."""
        return topology.remove_server(self.layout, name)
