"""`shardctl stack up|status|down`: the catalog Postgres, N shard Postgres servers and a Redis, each on a
port of its own under the data dir, with the resulting topology written where the settings read it."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from shardctl.control.ha import HAError, leader, shard_members
from shardctl.control.roles import ensure_roles, own_database
from shardctl.java import JavaUnavailableError, check_runtime, find_java
from shardctl.process import allocate_ports, pid_alive
from shardctl.settings import SETTINGS_FILE_NAME
from shardctl.stack.binaries import PostgresBinaries, find_postgres, find_redis_server
from shardctl.stack.ha.cluster import HACluster, HAState
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import DATABASE, SUPERUSER, PostgresServer, make_template
from shardctl.stack.redis_server import RedisServer
from shardctl.stack.server_runtime import reachable_postgres
from shardctl.stack.users import chown_tree, server_user, user_can_write
from shardctl.store import prepare as prepare_feature_store
from shardctl.store.grants import PIPELINE_ROLE, SERVING_ROLE, WRITER_ROLE
from shardctl.store.hashing import install_sql_functions

STATE_FILE_NAME = "stack.json"
CATALOG = "catalog"
DAGSTER_DATABASE = "dagster"


class StackError(RuntimeError):
    """A request the stack cannot honour; the message says why and what to do."""


@dataclass
class ServerStatus:
    name: str
    kind: str
    port: int
    pid: int | None
    healthy: bool
    detail: str = ""


@dataclass
class StackState:
    """What `up` started, persisted so `status` and `down` work from any later process."""

    pg_root: str
    user: str | None
    postgres: dict[str, str]
    catalog_port: int
    shard_ports: list[int]
    redis_port: int
    redis_pid: int | None = None
    redis_binary: str = ""
    java_home: str | None = None
    ha: dict[str, Any] | None = None  # HA mode: etcd + a Patroni cluster per shard (`HAState`)


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
        self.ha_proxied = ha_proxied  # members talk through fault-injection proxies (nemesis runs only)
        self.data_dir = Path(data_dir).absolute()
        self.java_home = java_home
        self.default_shards = default_shards
        self.postgres_bin_dir = postgres_bin_dir
        self.run_as_user = run_as_user
        self.ha_settings = ha_settings or HASettings()

    # -- persistence -----------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE_NAME

    @property
    def settings_file(self) -> Path:
        return self.data_dir / SETTINGS_FILE_NAME

    def load_state(self) -> StackState | None:
        try:
            recorded = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        # Keys a newer or older version wrote and this one does not know are ignored, not an error.
        return StackState(**{k: v for k, v in recorded.items() if k in StackState.__dataclass_fields__})

    def _save_state(self, state: StackState) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    # -- servers ---------------------------------------------------------------------------------------
    def _binaries(self, state: StackState) -> PostgresBinaries:
        p = state.postgres
        return PostgresBinaries(Path(p["bin_dir"]), p["version"], p["source"])

    def postgres_servers(self, state: StackState) -> list[PostgresServer]:
        """The catalog first, then shards in index order."""
        binaries = self._binaries(state)
        root = Path(state.pg_root)
        servers = [PostgresServer(CATALOG, state.catalog_port, root / CATALOG, binaries, state.user)]
        servers += [
            PostgresServer(f"shard{i}", port, root / f"shard{i}", binaries, state.user)
            for i, port in enumerate(state.shard_ports)
        ]
        return servers

    def ha_cluster(self, state: StackState) -> HACluster | None:
        """The HA shards (etcd + Patroni clusters), or None for a plain stack."""
        if state.ha is None:
            return None
        return HACluster(HAState.from_dict(state.ha), state.user, state.postgres["bin_dir"])

    def _shard_count(self, state: StackState) -> int:
        return len(state.ha["members"]) if state.ha else len(state.shard_ports)

    def redis_server(self, state: StackState) -> RedisServer:
        return RedisServer(state.redis_port, self.data_dir / "redis", state.redis_binary, state.redis_pid)

    # -- commands --------------------------------------------------------------------------------------
    def up(
        self, shards: int | None = None, base_port: int = 15432, ha: bool = False, replicas: int | None = None
    ) -> StackState:
        """Start whatever is not running; harmless when everything already is.

        With ``ha`` each shard is a Patroni cluster of a primary and ``replicas`` replicas, with etcd.
        """
        state = self.load_state()
        if state is not None and shards is not None and shards != self._shard_count(state):
            raise StackError(
                f"the stack in {self.data_dir} already has {self._shard_count(state)} shard servers; "
                f"`shardctl stack down --purge` first to start over with another count"
            )
        if state is not None and (ha or replicas is not None) and state.ha is None:
            raise StackError(f"the stack in {self.data_dir} runs without HA; run `shardctl stack down --purge` first")
        if state is not None and state.ha and replicas is not None and replicas != state.ha["replicas"]:
            raise StackError(
                f"the stack in {self.data_dir} runs {state.ha['replicas']} replicas per shard; "
                f"run `shardctl stack down --purge` first to change that"
            )
        fresh = state is None
        if state is None:
            state = self._plan(shards or self.default_shards, base_port, ha or replicas is not None, replicas)
        running_before = set(self._running_pids(state))
        try:
            self._bring_up(state)
        except BaseException as exc:  # Ctrl-C too: an interrupted `up` must not leave servers behind
            left = self._stop_started(state, running_before)
            if fresh and not left:
                self._forget(state)
            stopped = "stopped every server it had started" if not left else f"could not stop {', '.join(left)}"
            if isinstance(exc, Exception):
                raise StackError(f"stack up failed ({exc}); {stopped}") from exc
            raise
        return state

    def plan(self, shards: int, base_port: int, ha: bool = False, replicas: int | None = None) -> StackState:
        """Lay out a new stack and save it without starting anything; a later `up` starts it. Fault-injection
        runs use the gap to start the proxies their members will talk through."""
        if self.load_state() is not None:
            raise StackError(f"a stack is already laid out in {self.data_dir}")
        state = self._plan(shards, base_port, ha, replicas)
        self._save_state(state)
        return state

    def _bring_up(self, state: StackState) -> None:
        self._save_state(state)
        template = Path(state.pg_root) / "template"
        make_template(self._binaries(state), template, state.user)
        for server in self.postgres_servers(state):
            if not server.initialized():
                server.init_from(template)
            server.start()
            server.ensure_database(DATABASE)
            ensure_roles(server.dsn("postgres"))
            with psycopg.connect(server.dsn()) as conn:
                install_sql_functions(conn)
        catalog = self.postgres_servers(state)[0]
        catalog.ensure_database(DAGSTER_DATABASE)
        own_database(catalog.dsn("postgres"), DAGSTER_DATABASE)  # Dagster's storage is the pipeline's
        cluster = self.ha_cluster(state)
        if cluster is not None:
            self._ha_up(state, cluster)
        redis_server = self.redis_server(state)
        state.redis_pid = redis_server.start()
        self._save_state(state)
        self._write_settings(state)
        servers = self.postgres_servers(state)
        # Catalog tables, shard schema and every part's grants, as the control plane (the superuser here).
        prepare_feature_store(servers[0].dsn(), [e["dsn"] for e in self._shard_entries(state, servers[1:])])

    def _stop_started(self, state: StackState, running_before: set[int]) -> list[str]:
        """Stop, newest first, every server of ``state`` that was not running before; returns those left running."""

        def started(pid: int | None) -> bool:
            return pid_alive(pid) and pid not in running_before

        left = []
        redis_server = self.redis_server(state)
        if started(redis_server.pid) and not redis_server.stop():
            left.append("redis")
        cluster = self.ha_cluster(state)
        if cluster is not None:
            for member in cluster.all_members():  # Patroni first: it would restart a Postgres stopped under it
                if (started(member.patroni_pid()) or started(member.postgres_pid())) and not member.stop():
                    left.append(member.name)
            if started(cluster.etcd.pid) and not cluster.etcd.stop():
                left.append("etcd")
        for server in reversed(self.postgres_servers(state)):
            if started(server.pid()) and not server.stop():
                left.append(server.name)
        return left

    def _forget(self, state: StackState) -> None:
        """Remove what a failed first `up` created, so the next `up` plans afresh."""
        shutil.rmtree(state.pg_root, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.settings_file.unlink(missing_ok=True)

    def _ha_up(self, state: StackState, cluster: HACluster) -> None:
        cluster.up()
        for shard in range(cluster.shard_count()):
            cluster.ensure_database(shard, DATABASE)
            ensure_roles(cluster.shard_dsn(shard, "postgres"))  # on the primary; replicas replay them
            with psycopg.connect(cluster.shard_dsn(shard)) as conn:
                install_sql_functions(conn)

    def _plan(self, shards: int, base_port: int, ha: bool = False, replicas: int | None = None) -> StackState:
        user = server_user(self.run_as_user)
        binaries = reachable_postgres(find_postgres(self.postgres_bin_dir), user)
        plain_shards = 0 if ha else shards
        ha_replicas = replicas or self.ha_settings.replicas
        ha_ports = HACluster.ports_needed(shards, ha_replicas, self.ha_proxied) if ha else 0
        ports = allocate_ports(base_port, plain_shards + 2 + ha_ports)
        pg_root = self._pg_root(user)
        ha_state = (
            HACluster.plan(
                pg_root / "ha", shards, self.ha_settings, ports[plain_shards + 2 :], replicas, self.ha_proxied
            ).to_dict()
            if ha
            else None
        )
        # H2O trains and serving scores with this Java: a stack without a usable one fails here, before any
        # server starts, with what to do (JavaUnavailableError's message).
        java_home = str(find_java(self.java_home).home)
        return StackState(
            pg_root=str(pg_root),
            user=user,
            postgres={
                "bin_dir": str(binaries.bin_dir),
                "version": binaries.version,
                "source": binaries.source,
            },
            catalog_port=ports[0],
            shard_ports=ports[1 : plain_shards + 1],
            redis_port=ports[plain_shards + 1],
            redis_binary=find_redis_server(),
            java_home=java_home,
            ha=ha_state,
        )

    def _pg_root(self, user: str | None) -> Path:
        """Postgres data lives in the data dir if the server user can reach it, else under /var/tmp; either way
        the folder belongs to the server user alone (0700: configs there hold connection passwords)."""
        root = self.data_dir / "pg"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        chown_tree(root, user)
        if user_can_write(user, root):
            return root
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        root = Path("/var/tmp") / f"tessera-pg-{digest}"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        chown_tree(root, user)
        return root

    def _write_settings(self, state: StackState) -> None:
        servers = self.postgres_servers(state)
        settings = {
            "data_dir": str(self.data_dir),
            "catalog_dsn": servers[0].dsn(),
            "shards": self._shard_entries(state, servers[1:]),
            "redis_url": self.redis_server(state).url,
            "h2o": {"java_home": state.java_home},
            "dagster_dsn": servers[0].dsn(DAGSTER_DATABASE),
            # Each part's own role (shardctl/credentials.py). No passwords: the stack's servers trust loopback
            # (docs/architecture/physical.md, "Database roles", says why). The top-level DSNs above name the
            # stack's superuser: they are the operator's (tests, `shardctl` commands); the control plane runs
            # as it, since PostgreSQL 15 lets only a superuser create the subscriptions resharding uses.
            "serving": {"db_user": SERVING_ROLE},
            "writer": {"db_user": WRITER_ROLE},
            "pipeline": {"db_user": PIPELINE_ROLE},
            "control": {"db_user": SUPERUSER},
        }
        self.settings_file.write_text(json.dumps(settings, indent=2))

    def _shard_entries(self, state: StackState, servers: list[PostgresServer]) -> list[dict[str, Any]]:
        cluster = self.ha_cluster(state)
        if cluster is None:
            return [{"index": i, "dsn": s.dsn()} for i, s in enumerate(servers)]
        # Multi-host DSNs: every client finds the current primary itself, no proxy in between.
        return [{"index": i, "dsn": cluster.shard_dsn(i)} for i in range(cluster.shard_count())]

    def _ha_status(self, cluster: HACluster) -> list[ServerStatus]:
        etcd = cluster.etcd
        alive = pid_alive(etcd.pid)
        rows = [ServerStatus("etcd", "etcd", etcd.client_port, etcd.pid if alive else None, alive and etcd.healthy())]
        for shard in range(cluster.shard_count()):
            try:
                reported = {m.name: m for m in shard_members(shard, cluster.api_urls(shard))}
            except HAError:
                reported = {}
            current = leader(list(reported.values()))
            for member in cluster.members(shard):
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

    def status(self) -> list[ServerStatus]:
        state = self.load_state()
        if state is None:
            return []
        rows = []
        for server in self.postgres_servers(state):
            pid = server.pid()
            healthy = pid is not None and server.accepts_connections()
            kind = "catalog" if server.name == CATALOG else "shard"
            rows.append(
                ServerStatus(server.name, kind, server.port, pid, healthy, f"postgres {state.postgres['version']}")
            )
        cluster = self.ha_cluster(state)
        if cluster is not None:
            rows += self._ha_status(cluster)
        redis_server = self.redis_server(state)
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
        rows.append(self._java_status(state))
        return rows

    def _java_status(self, state: StackState) -> ServerStatus:
        """Healthy means H2O and h2o-genmodel can use it (a supported version with a libjvm), not merely present."""
        if not state.java_home:
            return ServerStatus("java", "runtime", 0, None, False, "no Java recorded: run `shardctl stack up`")
        try:
            runtime = check_runtime(Path(state.java_home), "the stack's")
        except JavaUnavailableError as exc:
            return ServerStatus("java", "runtime", 0, None, False, f"{exc}; run scripts/bootstrap.sh")
        return ServerStatus("java", "runtime", 0, None, True, f"Java {runtime.version} at {runtime.home}")

    def down(self, purge: bool = False) -> list[str]:
        """Stop every server by PID; with ``purge`` also delete their data. Returns what failed to stop."""
        state = self.load_state()
        if state is None:
            return []
        failed = []
        cluster = self.ha_cluster(state)
        if cluster is not None:
            failed += cluster.down()
        failed += [s.name for s in self.postgres_servers(state) if not s.stop()]
        if not self.redis_server(state).stop():
            failed.append("redis")
        else:
            state.redis_pid = None
            self._save_state(state)
        if purge and not failed:
            shutil.rmtree(state.pg_root, ignore_errors=True)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return failed

    def pids(self) -> list[int]:
        """Every PID the stack is running now (for tests and `down` verification)."""
        state = self.load_state()
        return [] if state is None else self._running_pids(state)

    def _running_pids(self, state: StackState) -> list[int]:
        """Running PIDs in start order: Postgres servers, then etcd and Patroni members, then Redis."""
        pids = [p for s in self.postgres_servers(state) if (p := s.pid())]
        cluster = self.ha_cluster(state)
        if cluster is not None:
            pids += cluster.pids()
        if pid_alive(state.redis_pid):
            pids.append(state.redis_pid)  # type: ignore[arg-type]
        return pids
