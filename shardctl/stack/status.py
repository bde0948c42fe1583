"""`shardctl stack status`: one row per server of the local stack (catalog, shard servers or Patroni clusters and
their members, etcd, Redis, the Java runtime), healthy or not, with the logical shards the catalog's placement
puts on each server. Reads only: it starts, stops and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg

from shardctl.control.ha import HAError, leader, shard_members
from shardctl.java import JavaUnavailableError, check_runtime
from shardctl.process import pid_alive
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.layout import CATALOG, StackLayout, StackState, refuse_stack_without_passwords
from shardctl.store.shardmap import ShardMapError, ShardMapStore, server_name


@dataclass
class ServerStatus:
    name: str
    kind: str
    port: int
    pid: int | None
    healthy: bool
    detail: str = ""
    logical_shards: int | None = None  # servers only: logical shards the catalog's placement puts on it


def _placed_detail(placed: dict[str, int] | None, name: str) -> str:
    return "; placement unknown (catalog unreadable)" if placed is None else f"; {placed.get(name, 0)} logical shards"


def placement_counts(layout: StackLayout, state: StackState) -> dict[str, int] | None:
    """Logical shards per server name in the catalog's current placement; None when it cannot be read
    (catalog down, no map yet)."""
    try:
        current = ShardMapStore(layout.catalog_dsn(state), connect_timeout=2).current()
    except (psycopg.Error, ShardMapError):
        return None
    counts: dict[str, int] = {}
    for server in current.placement_by_name().values():
        counts[server] = counts.get(server, 0) + 1
    return counts


def status(layout: StackLayout) -> list[ServerStatus]:
    """Every server's row, the catalog first; empty when there is no stack."""
    state = layout.load_state()
    if state is None:
        return []
    refuse_stack_without_passwords(layout, state)
    rows = []
    servers = layout.postgres_servers(state)
    catalog = servers[0]
    pid = catalog.pid()
    rows.append(
        ServerStatus(
            CATALOG,
            "catalog",
            catalog.port,
            pid,
            pid is not None and catalog.accepts_connections(),
            f"postgres {state.postgres['version']}",
        )
    )
    placed = placement_counts(layout, state) if rows[0].healthy else None
    for name, server in zip(layout.server_names(state) if state.ha is None else [], servers[1:], strict=True):
        pid = server.pid()
        healthy = pid is not None and server.accepts_connections()
        detail = f"postgres {state.postgres['version']} in {server.name}{_placed_detail(placed, name)}"
        count = None if placed is None else placed.get(name, 0)
        rows.append(ServerStatus(name, "server", server.port, pid, healthy, detail, count))
    cluster = layout.ha_cluster(state)
    if cluster is not None:
        rows += _ha_status(cluster, placed)
    redis_server = layout.redis_server(state)
    alive = pid_alive(state.redis_pid)
    rows.append(
        ServerStatus(
            "redis",
            "cache",
            state.redis_port,
            state.redis_pid if alive else None,
            alive and redis_server.answers(),
            "redis",
        )
    )
    rows.append(_java_status(state))
    if state.scorer_pid is not None:  # started by `stack up` (not by the tests' stacks)
        alive = pid_alive(state.scorer_pid)
        detail = f"python -m serving.scorer, probes on port {state.scorer_port}" if alive else "exited: see scorer.log"
        rows.append(
            ServerStatus("scorer", "scorer", state.scorer_port, state.scorer_pid if alive else None, alive, detail)
        )
    return rows


def _ha_status(cluster: HACluster, placed: dict[str, int] | None) -> list[ServerStatus]:
    etcd = cluster.etcd
    alive = pid_alive(etcd.pid)
    rows = [ServerStatus("etcd", "etcd", etcd.client_port, etcd.pid if alive else None, alive and etcd.healthy())]
    for shard in range(cluster.shard_count()):
        try:
            reported = {m.name: m for m in shard_members(shard, cluster.api_urls(shard))}
        except HAError:
            reported = {}
        current = leader(list(reported.values()))
        members = cluster.members(shard)
        primary = next((m for m in members if current and m.name == current.name), None)
        name = server_name(shard)
        rows.append(
            ServerStatus(
                name,
                "server",
                primary.plan.pg_port if primary else 0,
                primary.patroni_pid() if primary else None,
                primary is not None and current is not None and current.state == "running",
                f"patroni cluster shard{shard} ({len(members)} members){_placed_detail(placed, name)}",
                None if placed is None else placed.get(name, 0),
            )
        )
        for member in members:
            m = reported.get(member.name)
            role = ("primary" if current and current.name == member.name else "replica") if m else "member"
            running = m is not None and m.state in ("running", "streaming")
            detail = f"patroni {m.role} {m.state} tl {m.timeline}" if m else "patroni not reporting"
            rows.append(
                ServerStatus(
                    member.name,
                    role,
                    member.plan.pg_port,
                    member.patroni_pid(),
                    running and member.patroni_pid() is not None,
                    detail,
                )
            )
    return rows


def _java_status(state: StackState) -> ServerStatus:
    """Healthy means H2O and h2o-genmodel can use it (a supported version with a libjvm), not merely present."""
    if not state.java_home:
        return ServerStatus("java", "runtime", 0, None, False, "no Java recorded: run `shardctl stack up`")
    try:
        runtime = check_runtime(Path(state.java_home), "the stack's")
    except JavaUnavailableError as exc:
        return ServerStatus("java", "runtime", 0, None, False, f"{exc}; run scripts/bootstrap.sh")
    return ServerStatus("java", "runtime", 0, None, True, f"Java {runtime.version} at {runtime.home}")
