"""The nemesis's faults on a shard's cluster: hard kills, a pause longer than the ttl, a network partition.

Each acts on real processes by PID (never by name) or on the proxies a proxied stack routes its members'
traffic through (`testkit.ha.proxy`), and each has its undo where one exists (SIGCONT, heal).
"""

from __future__ import annotations

import contextlib
import os
import signal

from shardctl.stack.ha import leftovers
from shardctl.stack.ha.cluster import HACluster, PatroniMember
from testkit.ha.proxy import ProxyNet


def kill_member(member: PatroniMember) -> None:
    """SIGKILL the member's Patroni and its postmaster (a crashed machine, as far as the member goes)."""
    member.kill()


def kill_etcd(cluster: HACluster) -> None:
    pid = cluster.etcd.pid
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def pause_member(member: PatroniMember) -> list[int]:
    """SIGSTOP every process of the member (Patroni, postmaster, backends, walsenders): a frozen machine.
    Patroni first, so it cannot react to its Postgres stopping; returns the PIDs to continue later."""
    stopped: list[int] = []

    def stop(pid: int | None) -> None:
        if pid and pid not in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    patroni = member.patroni_pid()
    stop(patroni)
    stop(member.postgres_pid())
    for _ in range(3):  # a backend forked between a scan and the postmaster's stop: scan again
        for pid in leftovers.member_processes(member.plan.data_dir, [patroni, member.postgres_pid()]):
            stop(pid)
    return stopped


def resume(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def proxy_routes(cluster: HACluster, shard: int) -> dict[str, tuple[int, int]]:
    """The proxies a proxied stack needs: per member ``NAME.pg`` and ``NAME.api`` (how the others reach it)
    and ``NAME.etcd`` (how it reaches etcd)."""
    if not cluster.state.proxies:
        raise ValueError("this stack does not route its members through proxies (Stack(ha_proxied=True))")
    routes = {}
    for member in cluster.members(shard):
        p = member.plan
        routes[f"{p.name}.pg"] = (p.pg_connect_port or 0, p.pg_port)
        routes[f"{p.name}.api"] = (p.api_connect_port or 0, p.api_port)
        routes[f"{p.name}.etcd"] = (p.etcd_port or 0, cluster.state.etcd_client_port)
    return routes


def partition_names(cluster: HACluster, shard: int, victim: str) -> list[str]:
    """What to cut to isolate ``victim`` from etcd and from the other member: its etcd route, the routes in
    to it, and the routes in to the other member (only the victim uses those in a two-member shard)."""
    members = [m.name for m in cluster.members(shard)]
    if len(members) != 2:
        raise ValueError("the partition fault isolates one of two members: run the nemesis with one replica")
    return [f"{victim}.etcd"] + [f"{m}.{kind}" for m in members for kind in ("pg", "api")]


def partition(proxies: ProxyNet, cluster: HACluster, shard: int, victim: str) -> list[str]:
    names = partition_names(cluster, shard, victim)
    proxies.cut(names)
    return names
