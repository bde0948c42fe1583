"""`shardctl ha restart|reinit MEMBER`: bring one member back, in the spirit of patronictl's commands.

restart: a member whose Patroni answers gets its Postgres restarted through Patroni (``POST /restart``); a
member whose Patroni is dead, hung or stopped is started again from whatever it was killed in (see
`shardctl.stack.ha.leftovers`). reinit: a replica is cloned again from the primary, through Patroni's
``POST /reinitialize`` when it answers, else by starting it on an empty data directory.
Both wait until the member runs again (the primary running, a replica streaming) and otherwise fail with
one line that says why and what to run next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

from shardctl.control.ha import HAError, MemberStatus, _request, leader, shard_members
from shardctl.stack.ha import leftovers
from shardctl.stack.ha.cluster import HACluster, PatroniMember


@dataclass
class HealResult:
    member: str
    action: str  # what was done, in words
    role: str
    state: str
    seconds: float


def _answers(member: PatroniMember) -> bool:
    try:
        status, _ = _request("GET", f"{member.plan.api_url}/patroni", timeout=3.0)
    except OSError:
        return False
    return status in (200, 503)


def _report(cluster: HACluster, member: PatroniMember) -> MemberStatus | None:
    with contextlib.suppress(HAError, OSError):
        for m in shard_members(member.plan.shard, cluster.api_urls(member.plan.shard)):
            if m.name == member.name:
                return m
    return None


def _back(cluster: HACluster, member: PatroniMember, old_postmaster: int | None) -> MemberStatus | None:
    """The member's status once it runs again (a new postmaster): the running primary, or a streaming replica."""
    if old_postmaster is not None and member.postgres_pid() in (old_postmaster, None):
        return None
    try:
        members = shard_members(member.plan.shard, cluster.api_urls(member.plan.shard))
    except (HAError, OSError):
        return None
    m = next((m for m in members if m.name == member.name), None)
    if m is None or m.state not in ("running", "streaming"):
        return None
    if m.role == "leader":
        return m if m.state == "running" else None
    # A replica is back once it streams and, in synchronous mode, the shard has its sync standby again.
    synchronous = cluster.state.ha_settings.synchronous_mode
    return m if not synchronous or any(x.role == "sync_standby" for x in members) else None


def wait_back(
    cluster: HACluster, member: PatroniMember, timeout: float, next_step: str, old_postmaster: int | None = None
) -> MemberStatus:
    """Wait until ``member`` runs again (on a postmaster other than ``old_postmaster``); fail in one line with
    ``next_step`` if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if member.pid is not None and member.patroni_pid() is None:
            raise HAError(
                f"{member.name}: Patroni exited while coming back (see {member.plan.root / 'patroni.log'}); {next_step}"
            )
        found = _back(cluster, member, old_postmaster)
        if found is not None:
            return found
        time.sleep(0.5)
    last = _report(cluster, member)
    state = f"{last.role} {last.state}" if last else "not reporting"
    raise HAError(
        f"{member.name} is not back after {timeout:.0f}s (now {state}; log {member.plan.root / 'patroni.log'}); "
        f"{next_step}"
    )


def _start_fresh(cluster: HACluster, member: PatroniMember) -> None:
    """Stop whatever runs of ``member`` (continuing a stopped Patroni first) and start it again."""
    pid = member.patroni_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        member.stop(timeout=20.0)
    member.forget_if_dead()
    if not cluster.etcd.healthy():
        cluster.start_etcd()
    cluster.start_member(member)


def restart(cluster: HACluster, name: str, timeout: float = 120.0) -> HealResult:
    """Bring ``name`` back: restart its Postgres through Patroni, or start its Patroni again."""
    member = cluster.member(name)
    t0 = time.monotonic()
    old_postmaster = member.postgres_pid()
    running = member.patroni_pid() is not None and leftovers.process_state(member.patroni_pid() or 0) != "T"
    if running and _answers(member):
        status, text = _request("POST", f"{member.plan.api_url}/restart", {}, timeout=60.0, auth=cluster.api_auth)
        if status != 200:
            raise HAError(f"{name}: Patroni refused the restart ({text.strip()}); try `shardctl ha reinit {name}`")
        action = "restarted Postgres through Patroni"
    else:
        _start_fresh(cluster, member)
        action = "started Patroni again"
    next_step = f"run `shardctl ha reinit {name}` to clone it again from the primary"
    back = wait_back(cluster, member, timeout, next_step, old_postmaster)
    return HealResult(name, action, back.role, back.state, time.monotonic() - t0)


def reinit(cluster: HACluster, name: str, timeout: float = 180.0) -> HealResult:
    """Clone replica ``name`` again from its shard's primary (its data directory is replaced)."""
    member = cluster.member(name)
    shard = member.plan.shard
    try:
        primary = leader(shard_members(shard, cluster.api_urls(shard)))
    except HAError as exc:
        raise HAError(f"shard {shard}: {exc}; run `shardctl stack up` first") from exc
    if primary is None:
        raise HAError(f"shard {shard} has no running primary to clone {name} from; run `shardctl stack up` first")
    if primary.name == name:
        raise HAError(
            f"{name} is the primary of shard {shard}: reinit clones a replica; "
            f"run `shardctl ha switchover {shard}` first"
        )
    t0 = time.monotonic()
    action = ""
    old_postmaster = member.postgres_pid()
    if member.patroni_pid() is not None and leftovers.process_state(member.patroni_pid() or 0) != "T":
        with contextlib.suppress(OSError):
            status, _ = _request(
                "POST", f"{member.plan.api_url}/reinitialize", {"force": True}, timeout=30.0, auth=cluster.api_auth
            )
            if status == 200:
                action = "re-cloned through Patroni's /reinitialize"
    if not action:
        member.stop(timeout=20.0)
        member.clear_leftovers()
        leftovers.remove_data_dir(member.plan.data_dir)
        _start_fresh(cluster, member)
        action = "re-cloned from an empty data directory"
    back = wait_back(cluster, member, timeout, f"see {member.plan.root / 'patroni.out'}", old_postmaster)
    return HealResult(name, action, back.role, back.state, time.monotonic() - t0)
