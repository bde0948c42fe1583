"""One verdict per shard, healthy, degraded or down, and what commits do in that state.

A shard whose primary runs without its synchronous replica still answers, so a role table alone hides
it. Yet that is when RPO = 0 stops holding (non-strict: commits are acknowledged on one copy) or writes
stop (strict: commits block). The verdict says which, so `shardctl ha status` can exit 1 on it.
Operators alerting from Prometheus use Patroni's own gauge: ``patroni_sync_standby`` is 1 on the member
named synchronous standby; a shard whose members all report 0 (or only its primary reports) is degraded.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from shardctl.control.ha import HAError, MemberStatus, cluster_config, leader, shard_members
from shardctl.stack.ha.cluster import HACluster

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"


@dataclass
class ShardHealth:
    shard: int
    state: str  # healthy | degraded | down
    reason: str  # why it is not healthy ("" when it is)
    commits: str  # what a commit does in this state
    synchronous_mode_strict: bool
    members: list[MemberStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(shard: int, members: list[MemberStatus], expected: int, synchronous: bool, strict: bool) -> ShardHealth:
    """Judge one shard from its members as Patroni reports them (pure: unit-tested without servers)."""
    primary = leader(members)
    if primary is None:
        return ShardHealth(shard, DOWN, "no running primary", "refused: no primary", strict, members)
    streaming = [m for m in members if m.name != primary.name and m.state == "streaming"]
    sync = [m for m in streaming if m.role == "sync_standby"]
    missing = expected - 1 - len(streaming)
    if synchronous and not sync:
        commits = (
            "block until a synchronous replica returns (strict)"
            if strict
            else "acknowledged on the primary alone: RPO = 0 does not hold (non-strict)"
        )
        return ShardHealth(shard, DEGRADED, "no synchronous replica", commits, strict, members)
    commits = f"wait for synchronous replica {sync[0].name}" if sync else "acknowledged on the primary (asynchronous)"
    if missing > 0:
        absent = sorted({f"shard{shard}-m{i}" for i in range(expected)} - {primary.name} - {m.name for m in streaming})
        return ShardHealth(shard, DEGRADED, f"not streaming: {', '.join(absent)}", commits, strict, members)
    return ShardHealth(shard, HEALTHY, "", commits, strict, members)


def strict_mode(api_urls: list[str], default: bool) -> bool:
    """The cluster's live ``synchronous_mode_strict`` (it can be changed at runtime through ``PATCH /config``)."""
    try:
        return bool(cluster_config(api_urls).get("synchronous_mode_strict", default))
    except HAError:
        return default


_SYNC_GAUGE = re.compile(r'^patroni_sync_standby\{[^}]*name="([^"]+)"[^}]*\}\s+(\S+)', re.MULTILINE)


def sync_standby_gauges(api_urls: list[str], timeout: float = 3.0) -> dict[str, float]:
    """``patroni_sync_standby`` from the ``/metrics`` of every member that answers, by member name: what a
    Prometheus alert on the shard (``max by (scope) (patroni_sync_standby) == 0``) sees."""
    gauges: dict[str, float] = {}
    for url in api_urls:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue
        for name, value in _SYNC_GAUGE.findall(text):
            gauges[name] = float(value)
    return gauges


def to_json(shards: list[ShardHealth]) -> str:
    return json.dumps({"shards": [s.to_dict() for s in shards]}, indent=2)


def shard_health(cluster: HACluster, shard: int) -> ShardHealth:
    """The verdict on one shard of a running stack (``down`` when no member answers)."""
    settings = cluster.state.ha_settings
    urls = cluster.api_urls(shard)
    strict = strict_mode(urls, settings.synchronous_mode_strict)
    try:
        members = shard_members(shard, urls)
    except HAError as exc:
        return ShardHealth(shard, DOWN, str(exc), "refused: no primary", strict, [])
    return verdict(shard, members, len(cluster.state.members[shard]), settings.synchronous_mode, strict)
