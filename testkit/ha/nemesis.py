"""The nemesis: rounds of random faults on one HA shard under a steady write load, healed each time by the
platform's own commands, then judged on the whole history (`testkit.ha.history.check`).

Faults: SIGKILL of the primary, of the replica, of etcd; SIGSTOP of every process of the primary member for
longer than the ttl (then SIGCONT); a network partition of the primary from etcd and its replica (the
stack's members talk through proxies the nemesis cuts; the writer connects to the servers directly).
Heals: `shardctl ha restart` for a killed primary, `shardctl stack up` for the rest, and
`shardctl ha reinit` if a member is still not back after that. The test suite runs a short form
(`tests/ha/test_nemesis.py`), `bench/failover` the long one.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from shardctl.control.ha import HAError, MemberStatus, is_healthy, leader, shard_members
from shardctl.process import wait_until
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.ha.health import DEGRADED, shard_health
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import SUPERUSER
from testkit.ha import faults
from testkit.ha.drill import ensure_probe_table, rows_present
from testkit.ha.history import OK, HistoryWriter, Verdict, check, timeline_history
from testkit.ha.proxy import ProxyNet

FAULTS = ("kill-primary", "kill-replica", "kill-etcd", "pause-primary", "partition-primary")
SHARD = 0


@dataclass
class RoundResult:
    kind: str
    victim: str
    old_leader: str
    new_leader: str = ""
    first_write_s: float | None = None  # fault -> first acknowledged write that was started after it
    write_gap_s: float = 0.0  # longest time without an acknowledged write, from the fault to healed
    rejoin_s: float = 0.0  # heal command started -> every member streaming, a sync standby, no lag
    acked_missing: int = 0  # acknowledged rows absent from the primary after the round
    heals: list[str] = field(default_factory=list)  # the commands that healed it
    degraded_seen: bool = False  # `ha status` said degraded (exit 1) while the replica was gone


@dataclass
class NemesisReport:
    seed: int
    rounds: list[RoundResult]
    verdict: Verdict
    members_back: bool  # every member streaming, one the sync standby, same timeline
    replicas_have_every_ack: bool
    final_timeline: int | None = None
    final_members: str = ""  # each member's role, state, timeline and lag when judged (why members_back is False)


def shardctl(data_dir: Path, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """The platform's own command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
        timeout=timeout,
    )


def _members(cluster: HACluster) -> list[MemberStatus]:
    return shard_members(SHARD, cluster.api_urls(SHARD))


def _fully_healthy(cluster: HACluster) -> bool:
    members = _members(cluster)
    expected = len(cluster.state.members[SHARD])
    return (
        is_healthy(members, expected, cluster.state.ha_settings.synchronous_mode)
        and all(m.lag in (0, None) for m in members)
        and len({m.timeline for m in members}) == 1
    )


class Nemesis:
    def __init__(self, stack: Stack, seed: int, heal_timeout: float = 90.0, log=print):  # type: ignore[no-untyped-def]
        self.stack = stack
        state = stack.load_state()
        cluster = stack.ha_cluster(state) if state else None
        if cluster is None:
            raise HAError(f"no HA stack in {stack.data_dir}")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seed = seed
        self.heal_timeout = heal_timeout
        self.log = log
        self.ttl = cluster.state.ha_settings.ttl
        self.proxies = ProxyNet(faults.proxy_routes(cluster, SHARD))
        self.writer: HistoryWriter | None = None
        self.fault_at = 0.0

    # -- one round -----------------------------------------------------------------------------------
    def _roles(self) -> tuple[str, str]:
        members = _members(self.cluster)
        primary = leader(members)
        if primary is None:
            raise HAError("no running primary at the start of a round")
        return primary.name, next(m.name for m in members if m.name != primary.name)

    def _inject(self, kind: str, primary: str, replica: str) -> tuple[str, list[str]]:
        """Apply the fault, hold it as long as it lasts, undo what can be undone; returns the victim and the
        heal commands to run."""
        cluster = self.cluster
        if kind == "kill-primary":
            faults.kill_member(cluster.member(primary))
            self.fault_at = time.monotonic()
            wait_until(lambda: (new := leader(_members(cluster))) is not None and new.name != primary, 60, 0.25)
            return primary, ["ha", "restart", primary, "--force"]
        if kind == "kill-replica":
            faults.kill_member(cluster.member(replica))
            self.fault_at = time.monotonic()
            return replica, ["stack", "up"]
        if kind == "kill-etcd":
            faults.kill_etcd(cluster)
            self.fault_at = time.monotonic()
            time.sleep(self.ttl + 2)  # past the ttl: failsafe mode must keep the primary
            return "etcd", ["stack", "up"]
        if kind == "pause-primary":
            stopped = faults.pause_member(cluster.member(primary))
            self.fault_at = time.monotonic()
            try:
                time.sleep(self.ttl + 4)
            finally:  # never leave a stopped process behind, even when interrupted
                faults.resume(stopped)
            return primary, ["stack", "up"]
        if kind == "partition-primary":
            names = faults.partition(self.proxies, cluster, SHARD, primary)
            self.fault_at = time.monotonic()
            time.sleep(self.ttl + 4)
            self.proxies.heal(names)
            return primary, ["stack", "up"]
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")

    def _heal(self, victim: str, command: list[str]) -> list[str]:
        """Run the heal command, then `ha reinit` the victim if the shard is still not whole."""
        ran = [" ".join(command)]
        result = shardctl(self.stack.data_dir, *command)
        if result.returncode != 0:
            self.log(f"  `shardctl {ran[0]}` exited {result.returncode}: {result.stderr.strip()[-300:]}")
        if wait_until(lambda: _fully_healthy(self.cluster), self.heal_timeout, 0.5):
            return ran
        member = victim if victim != "etcd" else self._roles()[1]
        ran.append(f"ha reinit {member} --force")
        result = shardctl(self.stack.data_dir, "ha", "reinit", member, "--force")
        if result.returncode != 0:
            self.log(f"  `shardctl {ran[-1]}` exited {result.returncode}: {result.stderr.strip()[-300:]}")
        if not wait_until(lambda: _fully_healthy(self.cluster), self.heal_timeout, 0.5):
            raise HAError(f"shard not whole after {', '.join(ran)}: {_members(self.cluster)}")
        return ran

    def round(self, kind: str) -> RoundResult:
        assert self.writer is not None
        primary, replica = self._roles()
        writer = self.writer
        result = RoundResult(kind=kind, victim="", old_leader=primary)
        victim, heal = self._inject(kind, primary, replica)
        t0 = self.fault_at
        result.victim = victim
        if kind == "kill-replica":  # degraded mode must show before the replica returns
            result.degraded_seen = wait_until(lambda: shard_health(self.cluster, SHARD).state == DEGRADED, 30, 0.5)
        t_heal = time.monotonic()
        result.heals = self._heal(victim, heal)
        healed = time.monotonic()
        result.rejoin_s = healed - t_heal
        result.new_leader = self._roles()[0]
        ops = list(writer.ops)
        acked = [op for op in ops if op.outcome == OK]
        after = [op for op in acked if op.invoked >= t0]
        result.first_write_s = after[0].completed - t0 if after else None
        before = [op.completed for op in acked if op.completed <= t0][-1:] or [t0]
        times = before + [op.completed for op in acked if t0 < op.completed <= healed]
        if len(times) > 1:
            result.write_gap_s = max(b - a for a, b in itertools.pairwise(times))
        present = rows_present(self.cluster.shard_dsn(SHARD), writer.run_id)
        result.acked_missing = sum(op.n not in present for op in acked)
        return result

    # -- the run -------------------------------------------------------------------------------------
    def plan(self, rounds: int) -> list[str]:
        """Every fault kind once (shuffled), then random ones: short runs still cover each kind."""
        kinds = list(FAULTS)
        self.rng.shuffle(kinds)
        while len(kinds) < rounds:
            kinds.append(self.rng.choice(FAULTS))
        return kinds[:rounds]

    def run(self, rounds: int, settle: float = 1.0) -> NemesisReport:
        dsn = self.cluster.shard_dsn(SHARD)
        ensure_probe_table(dsn)
        results = []
        self.writer = HistoryWriter(dsn).start()
        if not wait_until(lambda: len(self.writer.acked()) >= 20, 30):  # type: ignore[union-attr]
            raise HAError(f"the writer got no acknowledged writes: {self.writer.ops[-1:]}")
        try:
            for i, kind in enumerate(self.plan(rounds)):
                r = self.round(kind)
                results.append(r)
                self.log(
                    f"round {i + 1}/{rounds} {kind:<17} victim {r.victim:<10} leader {r.old_leader}->{r.new_leader}"
                    f"  first write {r.first_write_s if r.first_write_s is None else round(r.first_write_s, 2)}s"
                    f"  gap {r.write_gap_s:.2f}s  rejoin {r.rejoin_s:.1f}s  missing {r.acked_missing}"
                    f"  heal: {'; '.join(r.heals)}"
                )
                time.sleep(settle)
        finally:
            self.writer.stop()
        return self.judge(results)

    def judge(self, results: list[RoundResult]) -> NemesisReport:
        assert self.writer is not None
        cluster = self.cluster
        wait_until(lambda: _fully_healthy(cluster), self.heal_timeout, 0.5)
        members = _members(cluster)
        back = _fully_healthy(cluster)
        dsn = cluster.shard_dsn(SHARD)
        present = rows_present(dsn, self.writer.run_id)
        with psycopg.connect(dsn) as conn:
            timelines = timeline_history(conn)
        acked = {op.n for op in self.writer.ops if op.outcome == OK}
        replicas_ok = True
        for m in cluster.members(SHARD):
            login = f"user={SUPERUSER} passfile={cluster.secrets.pgpass(SUPERUSER)}"
            conninfo = f"host=127.0.0.1 port={m.plan.pg_port} dbname=tessera {login} connect_timeout=3"
            with psycopg.connect(conninfo) as conn:
                rows = {
                    n for (n,) in conn.execute("SELECT n FROM tessera_ha_probe WHERE run = %s", (self.writer.run_id,))
                }
            replicas_ok = replicas_ok and acked <= rows
        return NemesisReport(
            seed=self.seed,
            rounds=results,
            verdict=check(list(self.writer.ops), present, timelines),
            members_back=back,
            replicas_have_every_ack=replicas_ok,
            final_timeline=leader(members).timeline if leader(members) else None,
            final_members="; ".join(f"{m.name} {m.role} {m.state} timeline {m.timeline} lag {m.lag}" for m in members),
        )

    def __enter__(self) -> Nemesis:
        self.proxies.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxies.heal()
        self.proxies.stop()
