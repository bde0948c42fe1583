"""Failure drills on a shard's cluster under write load: hard kill of the primary, planned switchover.

A writer thread commits numbered rows (idempotent inserts, through `shardctl.store.retry.PrimaryConnection`)
and records each acknowledged commit with its time and the server port that acknowledged it. After the
event we measure the time from the event to the first write acknowledged by the new primary, the
longest gap between acknowledgements, and which acknowledged rows the new primary lacks (must be none:
RPO = 0). The fault-injection tests and `bench/failover` both run these drills.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from shardctl.control.ha import HAError, MemberStatus, is_healthy, leader, shard_members, switchover
from shardctl.stack.ha.cluster import HACluster
from shardctl.store.retry import PrimaryConnection

PROBE_TABLE = "tessera_ha_probe"


@dataclass(frozen=True)
class Ack:
    n: int
    at: float  # time.monotonic() when the commit returned
    port: int  # the server that acknowledged it


def ensure_probe_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} ("
            " run text NOT NULL, n bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (run, n))"
        )


def rows_present(dsn: str, run: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {n for (n,) in conn.execute(f"SELECT n FROM {PROBE_TABLE} WHERE run = %s", (run,))}


class AckWriter:
    """Commits rows 1, 2, 3, ... of one run in a thread and records every acknowledged commit."""

    def __init__(self, dsn: str, interval: float = 0.01, deadline: float = 60.0):
        self.dsn = dsn
        self.interval = interval
        self.deadline = deadline
        self.run_id = uuid.uuid4().hex[:12]
        self.acks: list[Ack] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ack-writer-{self.run_id}", daemon=True)

    def _loop(self) -> None:
        sql = f"INSERT INTO {PROBE_TABLE} (run, n) VALUES (%s, %s) ON CONFLICT (run, n) DO NOTHING"
        with PrimaryConnection(self.dsn, self.deadline, retry_interval=0.05) as primary:
            n = 0
            while not self._stop.is_set():
                n += 1

                def write(conn: psycopg.Connection, n: int = n) -> int:
                    conn.execute(sql, (self.run_id, n))
                    return conn.info.port

                try:
                    port = primary.run(write)
                except Exception as exc:  # recorded, and the test fails on it
                    self.errors.append(f"row {n}: {exc}")
                    continue
                self.acks.append(Ack(n, time.monotonic(), port))
                time.sleep(self.interval)

    def start(self, min_acks: int = 20, timeout: float = 30.0) -> AckWriter:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while len(self.acks) < min_acks:
            if time.monotonic() > deadline:
                raise HAError(f"writer got only {len(self.acks)} acks in {timeout:.0f}s: {self.errors[-1:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.deadline + 10)

    def first_ack_on_other_port(self, since: float, old_port: int) -> Ack | None:
        return next((a for a in list(self.acks) if a.at > since and a.port != old_port), None)

    def wait_for_new_primary_ack(self, since: float, old_port: int, timeout: float) -> Ack | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ack = self.first_ack_on_other_port(since, old_port)
            if ack is not None:
                return ack
            time.sleep(0.02)
        return None

    def longest_gap(self, since: float) -> float:
        """The longest time between two consecutive acknowledgements around ``since``."""
        times = [since] + [a.at for a in self.acks if a.at > since]
        before = [a.at for a in self.acks if a.at <= since]
        if before:
            times[0] = before[-1]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@dataclass
class DrillResult:
    kind: str  # "failover" or "switchover"
    old_leader: str
    new_leader: str
    time_to_first_write: float  # seconds from the event to the first commit acknowledged by the new primary
    write_gap: float  # longest time without any acknowledged commit
    acked: int
    acked_missing: list[int] = field(default_factory=list)
    old_timeline: int | None = None
    new_timeline: int | None = None
    writer_errors: list[str] = field(default_factory=list)
    old_leader_rejoined: bool = False
    rewind_used: bool = False


def _leader(cluster: HACluster, shard: int) -> MemberStatus:
    return _leader_of(shard_members(shard, cluster.api_urls(shard)))


def _leader_of(members: list[MemberStatus]) -> MemberStatus:
    found = leader(members)
    if found is None:
        raise HAError("no running leader")
    return found


def wait_healthy(cluster: HACluster, shard: int, timeout: float = 90.0) -> list[MemberStatus]:
    """Wait until the shard has a leader and every member streams from it; returns the members."""
    expected = len(cluster.state.members[shard])
    deadline = time.monotonic() + timeout
    last: list[MemberStatus] = []
    while time.monotonic() < deadline:
        try:
            last = shard_members(shard, cluster.api_urls(shard))
            synchronous = cluster.state.ha_settings.synchronous_mode
            if is_healthy(last, expected, synchronous) and all(m.lag in (0, None) for m in last):
                return last
        except HAError:
            pass
        time.sleep(0.25)
    raise HAError(f"shard {shard} not healthy after {timeout:.0f}s: {last}")


def _finish(
    cluster: HACluster, shard: int, writer: AckWriter, kind: str, old: MemberStatus, t0: float, timeout: float
) -> DrillResult:
    first = writer.wait_for_new_primary_ack(t0, old.port, timeout)
    time.sleep(0.5)  # a few writes on the new primary, so the gap and the check cover them
    writer.stop()
    if first is None:
        raise HAError(f"{kind}: no write reached a new primary within {timeout:.0f}s; errors {writer.errors[-3:]}")
    new = _leader(cluster, shard)
    acked = {a.n for a in writer.acks}
    missing = sorted(acked - rows_present(cluster.shard_dsn(shard), writer.run_id))
    return DrillResult(
        kind=kind,
        old_leader=old.name,
        new_leader=new.name,
        time_to_first_write=first.at - t0,
        write_gap=writer.longest_gap(t0),
        acked=len(acked),
        acked_missing=missing,
        old_timeline=old.timeline,
        new_timeline=new.timeline,
        writer_errors=list(writer.errors),
    )


def hard_kill_failover(cluster: HACluster, shard: int, timeout: float = 60.0, rejoin: bool = True) -> DrillResult:
    """SIGKILL the primary's Patroni and Postgres under write load; then restart the old member so it
    rejoins as a replica (pg_rewind if its history diverged)."""
    ensure_probe_table(cluster.shard_dsn(shard))
    old = _leader(cluster, shard)
    member = cluster.member(old.name)
    writer = AckWriter(cluster.shard_dsn(shard)).start()
    log_size = _log_size(member.plan.log_file)
    t0 = time.monotonic()
    member.kill()
    try:
        result = _finish(cluster, shard, writer, "failover", old, t0, timeout)
    finally:
        writer.stop()
    if rejoin:
        cluster.start_member(member)
        members = wait_healthy(cluster, shard)
        result.old_leader_rejoined = any(m.name == old.name and m.state == "streaming" for m in members)
        result.new_timeline = _leader_of(members).timeline
        result.rewind_used = "running pg_rewind" in _log_since(member.plan.log_file, log_size)
    return result


def planned_switchover(cluster: HACluster, shard: int, timeout: float = 60.0) -> DrillResult:
    """A switchover through Patroni's REST API under write load; the old primary stays a replica."""
    ensure_probe_table(cluster.shard_dsn(shard))
    old = _leader(cluster, shard)
    writer = AckWriter(cluster.shard_dsn(shard)).start()
    t0 = time.monotonic()
    try:
        switchover(shard, cluster.api_urls(shard), auth=cluster.api_auth)
        result = _finish(cluster, shard, writer, "switchover", old, t0, timeout)
    finally:
        writer.stop()
    members = wait_healthy(cluster, shard)
    result.old_leader_rejoined = any(m.name == old.name and m.state == "streaming" for m in members)
    result.new_timeline = _leader_of(members).timeline
    return result


def _log_size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path, offset: int) -> str:
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""
