"""A shard's cluster as Patroni's REST API reports it, and planned switchovers through that API.

Any member answers for the whole cluster (``GET /cluster`` reads etcd), so we ask each member in turn
until one answers: a dead primary does not hide the cluster's state. Reads (``GET``) need no credentials;
every change (switchover, restart, reinitialize, config) sends the REST API's user and password (``auth``)
with HTTP Basic authentication, which Patroni asks for on its unsafe endpoints.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from shardctl.errors import ControlError


class HAError(ControlError, RuntimeError):
    """An HA request that cannot be honoured; the message says why."""


@dataclass
class MemberStatus:
    shard: int
    name: str
    role: str  # leader, sync_standby, replica (Patroni's words)
    state: str  # running, streaming, stopped, ...
    port: int
    timeline: int | None
    lag: int | None  # bytes behind the leader; None for the leader or when unknown
    api_url: str


ApiAuth = tuple[str, str]  # the REST API's user and password


def _request(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0, auth: ApiAuth | None = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def cluster(api_urls: list[str], timeout: float = 3.0) -> dict[str, Any]:
    """Patroni's ``/cluster`` document from the first member that answers."""
    errors = []
    for url in api_urls:
        try:
            status, text = _request("GET", f"{url}/cluster", timeout=timeout)
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            continue
        if status == 200:
            return json.loads(text)
        errors.append(f"{url}: HTTP {status}")
    raise HAError(f"no Patroni member answers ({'; '.join(errors) or 'no members'})")


def _lag(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def shard_members(shard: int, api_urls: list[str]) -> list[MemberStatus]:
    """Members of one shard's cluster with role, state, timeline and lag."""
    doc = cluster(api_urls)
    members = []
    for m in doc.get("members", []):
        members.append(
            MemberStatus(
                shard=shard,
                name=m["name"],
                role=m.get("role", "unknown"),
                state=m.get("state", "unknown"),
                port=int(m.get("port") or 0),
                timeline=m.get("timeline"),
                lag=_lag(m.get("lag")),
                api_url=m.get("api_url", "").removesuffix("/patroni"),
            )
        )
    return sorted(members, key=lambda m: m.name)


def leader(members: list[MemberStatus]) -> MemberStatus | None:
    return next((m for m in members if m.role == "leader" and m.state == "running"), None)


def is_healthy(members: list[MemberStatus], expected: int, synchronous: bool = False) -> bool:
    """One running leader, every other expected member streaming from it and, in synchronous mode, one
    of them named synchronous standby (only that one may be promoted without losing commits)."""
    streaming = [m for m in members if m.role != "leader" and m.state == "streaming"]
    has_sync = any(m.role == "sync_standby" for m in streaming)
    return leader(members) is not None and len(streaming) == expected - 1 and (has_sync or not synchronous)


def switchover(shard: int, api_urls: list[str], candidate: str | None = None, auth: ApiAuth | None = None) -> str:
    """A planned switchover of ``shard``'s primary (to ``candidate`` if given); returns Patroni's answer."""
    members = shard_members(shard, api_urls)
    if candidate and candidate not in {m.name for m in members}:
        raise HAError(f"shard {shard} has no member {candidate!r} (members: {', '.join(m.name for m in members)})")
    current = leader(members)
    if current is None:
        raise HAError(f"shard {shard} has no running leader: nothing to switch over (a failover is under way?)")
    body: dict[str, Any] = {"leader": current.name}
    if candidate:
        body["candidate"] = candidate
    status, text = _request("POST", f"{current.api_url}/switchover", body, timeout=60.0, auth=auth)
    if status != 200:
        raise HAError(f"switchover of shard {shard} refused: {text.strip()}")
    return text.strip()


def set_dynamic_config(api_urls: list[str], patch: dict[str, Any], auth: ApiAuth | None = None) -> dict[str, Any]:
    """PATCH the cluster-wide configuration (e.g. ``synchronous_mode_strict``) through any member."""
    for url in api_urls:
        try:
            status, text = _request("PATCH", f"{url}/config", patch, auth=auth)
        except OSError:
            continue
        if status == 200:
            return json.loads(text)
        raise HAError(f"config change refused: {text.strip()}")
    raise HAError("no Patroni member answers")


def cluster_config(api_urls: list[str]) -> dict[str, Any]:
    """The cluster-wide configuration (``GET /config``) from the first member that answers."""
    for url in api_urls:
        try:
            status, text = _request("GET", f"{url}/config", timeout=3.0)
        except OSError:
            continue
        if status == 200:
            return json.loads(text)
    raise HAError("no Patroni member answers")
