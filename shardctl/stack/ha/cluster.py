"""HA shards of the local stack: one etcd, and per shard a Patroni cluster of a primary and N replicas.

Every process is ours to stop by PID: etcd and each Patroni run in sessions of their own, started
directly as the server user (no wrapper process), and Patroni runs its Postgres as a child. Stopping a
member sends SIGTERM to its Patroni, which shuts Postgres down first; a Postgres left behind (its Patroni
was SIGKILLed) is stopped by the PID in its postmaster.pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from shardctl.control.etcd import enable_auth
from shardctl.control.ha import HAError, MemberStatus, is_healthy, shard_members
from shardctl.process import favour_coordination, pid_alive, stop_pid
from shardctl.stack.ha import leftovers
from shardctl.stack.ha.config import Logins, MemberPlan, member_config, multi_host_dsn, render
from shardctl.stack.ha.etcd import EtcdServer, find_etcd
from shardctl.stack.ha.runtime import patroni_command, patroni_environment
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import (
    REPLICATION_USER,
    SERVER_PASSFILE,
    SUPERUSER,
    pgpass_line,
    verify_full,
    write_owned,
)
from shardctl.stack.secrets import StackSecrets
from shardctl.stack.users import chown_tree


@dataclass
class HAState:
    """The HA part of the stack's state file: layout, ports and settings. PIDs live in pid files next to
    each process's data (``etcd.pid``, ``patroni.pid``), so a restarted member is found by any process."""

    root: str
    replicas: int
    etcd_client_port: int
    etcd_peer_port: int
    # per shard, per member: [pg_port, api_port]
    members: list[list[list[int]]]
    etcd_binary: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    # Fault-injection runs only: per shard, per member [pg, api, etcd] proxy ports (see MemberPlan); empty
    # in every normal stack.
    proxies: list[list[list[int]]] = field(default_factory=list)
    # `stack up --tls`: the folder of the stack's CA and server certificate (shardctl/stack/tls.py).
    tls: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HAState:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ha_settings(self) -> HASettings:
        return HASettings(**self.settings)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _our_process(pid: int | None, marker: Path) -> int | None:
    """``pid`` if it is alive and its command line names ``marker`` (a PID reused by another process is
    never signalled)."""
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if str(marker).encode() in cmdline else None


class PatroniMember:
    """One member: a Patroni process and the Postgres it runs.

    The Patroni PID is kept in a file next to its config, so any process (a later `stack down`, a test
    that restarted the member) finds the current one.
    """

    def __init__(self, plan: MemberPlan, user: str | None):
        self.plan = plan
        self.user = user

    @property
    def pid_file(self) -> Path:
        return self.plan.root / "patroni.pid"

    @property
    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    @property
    def name(self) -> str:
        return self.plan.name

    def patroni_pid(self) -> int | None:
        """Patroni's PID if it is alive and still our Patroni (guards against a reused PID)."""
        return _our_process(self.pid, self.plan.config_file)

    def postgres_pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid, if it runs."""
        try:
            pid = int((self.plan.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def forget_if_dead(self) -> None:
        """Drop the PID file of a Patroni that is gone (killed, crashed), so that a new start is not taken for
        one that exited at once, and its leftover log tail is not reported as the new start's."""
        if self.pid is not None and self.patroni_pid() is None:
            self.pid_file.unlink(missing_ok=True)

    def clear_leftovers(self) -> None:
        """Make a dead member startable whatever state it was killed in: stop the Postgres, pg_basebackup or
        pg_rewind its Patroni left (even stopped ones), drop a stale postmaster.pid, and remove a clone that
        did not finish (no pg_control: no database in it) so Patroni clones again."""
        # The recorded Patroni's session holds its orphans, unless that PID now belongs to someone else.
        session = self.pid if self.patroni_pid() or not pid_alive(self.pid) else None
        leftovers.clear(self.plan.data_dir, [session])
        leftovers.remove_stale_pid_file(self.plan.data_dir)
        if leftovers.interrupted_clone(self.plan.data_dir):
            leftovers.remove_data_dir(self.plan.data_dir)

    @property
    def server_passfile(self) -> Path:
        """The superuser's passfile for the Postgres this member runs (its PGPASSFILE)."""
        return self.plan.root / SERVER_PASSFILE

    def write_config(
        self, ha: HASettings, etcd_url: str, bin_dir: str, logins: Logins, parameters: dict[str, str] | None = None
    ) -> None:
        """patroni.yml and the server's passfile, both 0600 in the member's 0700 folder (they hold passwords)."""
        self.plan.root.mkdir(parents=True, exist_ok=True)
        self.plan.root.chmod(0o700)
        config = render(member_config(self.plan, ha, etcd_url, bin_dir, logins, parameters), self.plan.tls_dir)
        write_owned(self.plan.config_file, config, self.user)
        write_owned(self.server_passfile, pgpass_line(SUPERUSER, logins.superuser), self.user)
        chown_tree(self.plan.root, self.user)

    def start(self) -> int:
        """Start Patroni (it initdb's or clones its Postgres as needed); returns Patroni's PID."""
        running = self.patroni_pid()
        if running:
            return running
        self.clear_leftovers()
        argv = [*patroni_command(self.user), str(self.plan.config_file)]
        user_kwargs: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            user_kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with open(self.plan.root / "patroni.out", "ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.plan.root,
                env=patroni_environment(self.plan.root, self.server_passfile),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                **user_kwargs,
            )
        favour_coordination(proc.pid)  # before it starts Postgres, which inherits the priority
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 40.0) -> bool:
        """SIGTERM Patroni (it stops Postgres first), then make sure its Postgres is gone too."""
        ok = True
        pid = self.patroni_pid()
        if pid:
            ok = stop_pid(pid, signal.SIGTERM, timeout)
        postgres = self.postgres_pid()
        if postgres:
            ok = stop_pid(postgres, signal.SIGINT, 30.0) and ok
        if ok:
            self.pid_file.unlink(missing_ok=True)
        return ok

    def log_tail(self, lines: int = 15) -> str:
        text = ""
        for name in ("patroni.out", "patroni.log"):
            with contextlib.suppress(OSError):
                text += (self.plan.root / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def kill(self) -> tuple[int | None, int | None]:
        """SIGKILL Patroni and its Postgres (fault injection); returns the two PIDs killed."""
        patroni, postgres = self.patroni_pid(), self.postgres_pid()
        for pid in (patroni, postgres):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in (patroni, postgres):
            if pid:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
        return patroni, postgres


class HACluster:
    """etcd plus one Patroni cluster per shard, as recorded in an `HAState`."""

    def __init__(self, state: HAState, user: str | None, bin_dir: str, secrets: StackSecrets):
        self.state = state
        self.user = user
        self.bin_dir = bin_dir
        self.secrets = secrets

    @property
    def api_auth(self) -> tuple[str, str]:
        """What the REST API's unsafe endpoints (switchover, restart, reinitialize) ask for."""
        return self.secrets.api_auth()

    def logins(self) -> Logins:
        api_user, api_password = self.api_auth
        return Logins(
            superuser=self.secrets.pg_password(SUPERUSER),
            replication=self.secrets.pg_password(REPLICATION_USER),
            api_user=api_user,
            api_password=api_password,
            etcd_user="patroni",
            etcd_password=self.secrets.etcd_password("patroni"),
        )

    @classmethod
    def plan(
        cls,
        root: Path,
        shards: int,
        ha: HASettings,
        ports: list[int],
        replicas: int | None = None,
        proxied: bool = False,
    ) -> HAState:
        """A new layout: ``ports`` holds 2 for etcd, then 2 per member (Postgres, REST API), then with
        ``proxied`` 3 per member for the fault-injection proxies."""
        per_shard = (replicas if replicas is not None else ha.replicas) + 1
        it = iter(ports[2:])
        members = [[[next(it), next(it)] for _ in range(per_shard)] for _ in range(shards)]
        proxies = [[[next(it), next(it), next(it)] for _ in range(per_shard)] for _ in range(shards)] if proxied else []
        settings = ha.model_dump()
        if replicas is not None:
            settings["replicas"] = replicas
        return HAState(
            root=str(root),
            replicas=per_shard - 1,
            etcd_client_port=ports[0],
            etcd_peer_port=ports[1],
            members=members,
            etcd_binary=find_etcd(),
            settings=settings,
            proxies=proxies,
        )

    @staticmethod
    def ports_needed(shards: int, replicas: int, proxied: bool = False) -> int:
        return 2 + (5 if proxied else 2) * shards * (replicas + 1)

    # -- parts ---------------------------------------------------------------------------------------
    @property
    def etcd(self) -> EtcdServer:
        s = self.state
        etcd_dir = Path(s.root) / "etcd"
        pid = _our_process(_read_pid(etcd_dir / "etcd.pid"), etcd_dir)
        return EtcdServer(s.etcd_client_port, s.etcd_peer_port, etcd_dir, s.etcd_binary, pid)

    def members(self, shard: int) -> list[PatroniMember]:
        root = Path(self.state.root)
        result = []
        for i, (pg_port, api_port) in enumerate(self.state.members[shard]):
            via = self.state.proxies[shard][i] if self.state.proxies else [None, None, None]
            tls_dir = Path(self.state.tls) if self.state.tls else None
            plan = MemberPlan(shard, i, pg_port, api_port, root / f"shard{shard}" / f"m{i}", *via, tls_dir=tls_dir)
            result.append(PatroniMember(plan, self.user))
        return result

    def all_members(self) -> list[PatroniMember]:
        return [m for shard in range(len(self.state.members)) for m in self.members(shard)]

    def member(self, name: str) -> PatroniMember:
        for m in self.all_members():
            if m.name == name:
                return m
        raise HAError(f"no member named {name!r}")

    def api_urls(self, shard: int) -> list[str]:
        return [m.plan.api_url for m in self.members(shard)]

    def shard_dsn(self, shard: int, dbname: str = "tessera") -> str:
        ports = [pg for pg, _ in self.state.members[shard]]
        dsn = multi_host_dsn(ports, dbname, passfile=self.secrets.pgpass(SUPERUSER))
        return verify_full(dsn, str(Path(self.state.tls) / "ca.crt")) if self.state.tls else dsn

    def shard_count(self) -> int:
        return len(self.state.members)

    def check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.shard_count():
            raise HAError(f"no shard {shard}: this stack has shards 0..{self.shard_count() - 1}")

    # -- lifecycle -----------------------------------------------------------------------------------
    def start_etcd(self) -> int:
        """Start etcd (or keep the running one) with authentication on: only the stack's users reach it."""
        etcd = self.etcd
        pid = etcd.start()
        (etcd.dir / "etcd.pid").write_text(f"{pid}\n")
        enable_auth(etcd.url, self.secrets.etcd_password("root"), self.secrets.etcd_password("patroni"))
        return pid

    def start_member(self, member: PatroniMember) -> int:
        return member.start()

    def up(self, timeout: float = 180.0, parameters: Callable[[MemberPlan], dict[str, str]] | None = None) -> None:
        """Start etcd, then every member (primaries bootstrap first, replicas clone from them), and wait
        until each shard has a leader with every replica streaming; ``parameters`` gives each member's own
        PostgreSQL settings (its WAL archiving)."""
        Path(self.state.root).mkdir(parents=True, exist_ok=True)
        chown_tree(Path(self.state.root), self.user)
        self.start_etcd()
        ha = self.state.ha_settings
        logins = self.logins()
        for member in self.all_members():
            member.forget_if_dead()
            own = parameters(member.plan) if parameters else None
            member.write_config(ha, self.etcd.url, self.bin_dir, logins, own)
        for shard in range(self.shard_count()):
            self.start_member(self.members(shard)[0])
        for shard in range(self.shard_count()):
            self.wait_for_leader(shard, timeout)
            for member in self.members(shard)[1:]:
                self.start_member(member)
        for shard in range(self.shard_count()):
            self.wait_healthy(shard, timeout)

    def wait_for_leader(self, shard: int, timeout: float) -> MemberStatus:
        found: list[MemberStatus] = []

        def has_leader() -> bool:
            members = shard_members(shard, self.api_urls(shard))
            found[:] = [m for m in members if m.role == "leader" and m.state == "running"]
            return bool(found)

        if not self._wait(shard, has_leader, timeout):
            raise HAError(f"shard {shard}: no leader after {timeout:.0f}s; see {self._log_hint(shard)}")
        return found[0]

    def wait_healthy(self, shard: int, timeout: float) -> None:
        expected = len(self.state.members[shard])
        synchronous = self.state.ha_settings.synchronous_mode

        def healthy() -> bool:
            return is_healthy(shard_members(shard, self.api_urls(shard)), expected, synchronous)

        if not self._wait(shard, healthy, timeout):
            raise HAError(f"shard {shard}: members not all streaming after {timeout:.0f}s; see {self._log_hint(shard)}")

    def _wait(self, shard: int, check: Callable[[], bool], timeout: float) -> bool:
        """Poll ``check`` until true or ``timeout``; fail at once if a member's Patroni has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_if_dead(shard)
            with contextlib.suppress(HAError, OSError):
                if check():
                    return True
            time.sleep(0.25)
        return False

    def _raise_if_dead(self, shard: int) -> None:
        for member in self.members(shard):
            if member.pid is not None and member.patroni_pid() is None:
                raise HAError(f"{member.name}: Patroni exited during start:\n{member.log_tail()}")

    def _log_hint(self, shard: int) -> str:
        return ", ".join(str(m.plan.root / "patroni.out") for m in self.members(shard))

    def ensure_database(self, shard: int, dbname: str) -> None:
        """Create ``dbname`` on the shard's primary (replicas receive it through replication)."""
        with psycopg.connect(self.shard_dsn(shard, "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(f'CREATE DATABASE "{dbname}"')

    def down(self) -> list[str]:
        """Stop every Patroni (replicas first, so the primary does not wait on them), then etcd."""
        failed = []
        leaders = self._leaders()
        for member in sorted(self.all_members(), key=lambda m: m.name in leaders):
            if not member.stop():
                failed.append(member.name)
        etcd = self.etcd
        if etcd.stop():
            (etcd.dir / "etcd.pid").unlink(missing_ok=True)
        else:
            failed.append("etcd")
        return failed

    def _leaders(self) -> set[str]:
        names = set()
        for shard in range(self.shard_count()):
            with contextlib.suppress(HAError):
                names |= {m.name for m in shard_members(shard, self.api_urls(shard)) if m.role == "leader"}
        return names

    def pids(self) -> list[int]:
        """Every etcd, Patroni and Postgres PID that runs now."""
        etcd_pid = self.etcd.pid
        pids = [etcd_pid] if pid_alive(etcd_pid) else []
        for member in self.all_members():
            pids += [p for p in (member.patroni_pid(), member.postgres_pid()) if p]
        return pids  # type: ignore[return-value]
