"""`shardctl stack up|status|down|remove-server`: the catalog Postgres, N servers (plain Postgres, or with
``--ha`` Patroni pairs) and a Redis, each on a port of its own under the data dir, with the resulting
topology written where the settings read it. `up --servers N` on a running stack adds the missing servers
and registers them in the catalog; it never changes the placement of logical shards (only `shardctl
migrate` does), so an added server stays empty until a migration moves logical shards onto it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from shardctl.control.ha import HAError, leader, shard_members
from shardctl.control.migration.journal import Journal
from shardctl.control.roles import ensure_roles, own_database
from shardctl.errors import LocalStackError
from shardctl.java import JavaUnavailableError, check_runtime, find_java
from shardctl.process import allocate_ports, pid_alive
from shardctl.settings import SETTINGS_FILE_NAME
from shardctl.stack.binaries import PostgresBinaries, find_postgres, find_redis_server
from shardctl.stack.ha.cluster import HACluster, HAState
from shardctl.stack.ha.etcd import forget_scope
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import DATABASE, SUPERUSER, PostgresServer, make_template
from shardctl.stack.redis_server import RedisServer
from shardctl.stack.server_runtime import reachable_postgres
from shardctl.stack.users import chown_tree, server_user, user_can_write
from shardctl.store import prepare as prepare_feature_store
from shardctl.store.grants import PIPELINE_ROLE, SERVING_ROLE, WRITER_ROLE
from shardctl.store.hashing import install_sql_functions
from shardctl.store.schema import apply_schema
from shardctl.store.shardmap import ShardMapError, ShardMapStore, server_name

STATE_FILE_NAME = "stack.json"


CATALOG = "catalog"
DAGSTER_DATABASE = "dagster"


def _plain_ids(state: StackState) -> list[int]:
    """The plain servers' numbers, parallel to ``shard_ports`` (empty on an HA stack)."""
    return list(state.server_ids) if state.server_ids is not None else list(range(len(state.shard_ports)))


def _placed_detail(placed: dict[str, int] | None, name: str) -> str:
    return "; placement unknown (catalog unreadable)" if placed is None else f"; {placed.get(name, 0)} logical shards"


class StackError(LocalStackError, RuntimeError):
    """A request the stack cannot honour; the message says why and what to do."""


@dataclass
class ServerStatus:
    name: str
    kind: str
    port: int
    pid: int | None
    healthy: bool
    detail: str = ""
    logical_shards: int | None = None  # servers only: logical shards the catalog's placement puts on it


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
    # Plain stacks: the number of each server, parallel to ``shard_ports`` (server ``n`` is named
    # ``server-n`` in the catalog and lives in ``shard<n>``); None in states written before servers could be
    # removed, meaning 0..N-1. HA stacks number their Patroni clusters by position.
    server_ids: list[int] | None = None


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
            PostgresServer(f"shard{n}", port, root / f"shard{n}", binaries, state.user)
            for n, port in zip(_plain_ids(state), state.shard_ports, strict=True)
        ]
        return servers

    @staticmethod
    def server_ids(state: StackState) -> list[int]:
        """Each server's number, in order (server ``n`` is ``server-n`` in the catalog)."""
        return list(range(len(state.ha["members"]))) if state.ha is not None else _plain_ids(state)

    def server_names(self, state: StackState) -> list[str]:
        return [server_name(n) for n in self.server_ids(state)]

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
        self,
        servers: int | None = None,
        base_port: int = 15432,
        ha: bool = False,
        replicas: int | None = None,
        *,
        shards: int | None = None,
    ) -> StackState:
        """Start whatever is not running; harmless when everything already is. ``shards`` is the deprecated
        name of ``servers``.

        With ``ha`` each server is a Patroni cluster of a primary and ``replicas`` replicas, with etcd. On a
        stack with fewer than ``servers`` servers, the missing ones are added (`add_servers`).
        """
        servers = servers if servers is not None else shards
        state = self.load_state()
        if state is not None and (ha or replicas is not None) and state.ha is None:
            raise StackError(f"the stack in {self.data_dir} runs without HA; run `shardctl stack down --purge` first")
        if state is not None and state.ha and replicas is not None and replicas != state.ha["replicas"]:
            raise StackError(
                f"the stack in {self.data_dir} runs {state.ha['replicas']} replicas per server; "
                f"run `shardctl stack down --purge` first to change that"
            )
        if state is not None and servers is not None and servers < self._shard_count(state):
            raise StackError(
                f"the stack in {self.data_dir} already has {self._shard_count(state)} servers; a stack never "
                f"drops servers on `up`: move their logical shards away (`shardctl migrate`), then "
                f"`shardctl stack remove-server NAME`"
            )
        if state is not None and servers is not None and servers > self._shard_count(state):
            return self.add_servers(servers - self._shard_count(state))
        fresh = state is None
        if state is None:
            state = self._plan(servers or self.default_shards, base_port, ha or replicas is not None, replicas)
        with self._all_or_nothing(
            state, set(self._running_pids(state)), "stack up", lambda: fresh and self._forget(state)
        ):
            self._bring_up(state)
        return state

    @contextlib.contextmanager
    def _all_or_nothing(
        self, state: StackState, running_before: set[int], what: str, undo: Callable[[], object]
    ) -> Iterator[None]:
        """Run the body; if it fails (Ctrl-C too: an interrupted `up` must not leave servers behind), stop every
        server of ``state`` it started and, if all stopped, ``undo()`` what it recorded."""
        try:
            yield
        except BaseException as exc:
            left = self._stop_started(state, running_before)
            if not left:
                undo()
            stopped = "stopped every server it had started" if not left else f"could not stop {', '.join(left)}"
            if isinstance(exc, Exception):
                raise StackError(f"{what} failed ({exc}); {stopped}") from exc
            raise

    def add_servers(self, count: int) -> StackState:
        """Add ``count`` empty servers to the running stack (with HA, Patroni clusters like the others): start
        them, apply the schema, record them in the state and settings files and register them in the catalog.
        The placement does not change. All or nothing: a failure stops and forgets the new servers."""
        before = self.load_state()
        if before is None:
            raise StackError(f"no stack in {self.data_dir}: run `shardctl stack up` first")
        if before.ha is not None and before.ha.get("proxies"):
            raise StackError("a fault-injection stack (proxied members) cannot grow: start a new one")
        state = StackState(**json.loads(json.dumps(asdict(before))))  # a deep copy to grow
        taken = set(self._ports(state))
        near = min(taken)  # beside the stack's own ports, which its `up` found free
        if state.ha is None:
            ids = self.server_ids(state)
            ports = allocate_ports(near, count, taken)
            state.server_ids = ids + [max(ids, default=-1) + 1 + i for i in range(count)]
            state.shard_ports = [*state.shard_ports, *ports]
        else:
            per_server = state.ha["replicas"] + 1
            ports = iter(allocate_ports(near, 2 * per_server * count, taken))
            state.ha["members"] += [[[next(ports), next(ports)] for _ in range(per_server)] for _ in range(count)]
        added = self.server_names(state)[-count:]

        def forget_added() -> None:
            with contextlib.suppress(OSError):  # etcd gone too: its keys do not matter then
                self._drop_data(state, added)
            self._save_state(before)
            self._write_settings(before)

        with self._all_or_nothing(state, set(self._running_pids(before)), f"adding {', '.join(added)}", forget_added):
            self._bring_up(state, tuple(added))
        return state

    def _ports(self, state: StackState) -> list[int]:
        """Every port the stack's layout uses (so an added server takes none of them)."""
        ports = [state.catalog_port, *state.shard_ports, state.redis_port]
        if state.ha is not None:
            ports += [state.ha["etcd_client_port"], state.ha["etcd_peer_port"]]
            ports += [p for server in state.ha["members"] for member in server for p in member]
            ports += [p for server in state.ha.get("proxies", []) for member in server for p in member]
        return ports

    def plan(self, shards: int, base_port: int, ha: bool = False, replicas: int | None = None) -> StackState:
        """Lay out a new stack and save it without starting anything; a later `up` starts it. Fault-injection
        runs use the gap to start the proxies their members will talk through."""
        if self.load_state() is not None:
            raise StackError(f"a stack is already laid out in {self.data_dir}")
        state = self._plan(shards, base_port, ha, replicas)
        self._save_state(state)
        return state

    def _bring_up(self, state: StackState, added: tuple[str, ...] = ()) -> None:
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
        entries = self._shard_entries(state, servers[1:])
        maps = ShardMapStore(servers[0].dsn())
        maps.ensure_schema()
        try:
            maps.current()  # once a map exists the catalog is the truth: the stack only adds servers to it
        except ShardMapError:
            prepare_feature_store(servers[0].dsn(), [e["dsn"] for e in entries])
        for entry in entries:  # servers added to a running stack: schema, then known to the catalog (unplaced)
            apply_schema(entry["dsn"])
            # A name the stack used before (a removed server's) gets the new server's DSN.
            maps.register_server(entry["name"], entry["dsn"], replace=entry["name"] in added)

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
            "servers": self._shard_entries(state, servers[1:]),
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
        names = self.server_names(state)
        if cluster is None:
            return [{"index": i, "name": names[i], "dsn": s.dsn()} for i, s in enumerate(servers)]
        # Multi-host DSNs: every client finds the current primary itself, no proxy in between.
        return [{"index": i, "name": names[i], "dsn": cluster.shard_dsn(i)} for i in range(cluster.shard_count())]

    def _ha_status(self, cluster: HACluster, placed: dict[str, int] | None) -> list[ServerStatus]:
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

    def placement_counts(self, state: StackState) -> dict[str, int] | None:
        """Logical shards per server name in the catalog's current placement; None when it cannot be read
        (catalog down, no map yet)."""
        try:
            current = ShardMapStore(self.postgres_servers(state)[0].dsn(), connect_timeout=2).current()
        except (psycopg.Error, ShardMapError):
            return None
        counts: dict[str, int] = {}
        for server in current.placement_by_name().values():
            counts[server] = counts.get(server, 0) + 1
        return counts

    def status(self) -> list[ServerStatus]:
        state = self.load_state()
        if state is None:
            return []
        rows = []
        servers = self.postgres_servers(state)
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
        placed = self.placement_counts(state) if rows[0].healthy else None
        for name, server in zip(self.server_names(state) if state.ha is None else [], servers[1:], strict=True):
            pid = server.pid()
            healthy = pid is not None and server.accepts_connections()
            detail = f"postgres {state.postgres['version']} in {server.name}{_placed_detail(placed, name)}"
            count = None if placed is None else placed.get(name, 0)
            rows.append(ServerStatus(name, "server", server.port, pid, healthy, detail, count))
        cluster = self.ha_cluster(state)
        if cluster is not None:
            rows += self._ha_status(cluster, placed)
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

    def remove_server(self, name: str) -> StackState:
        """Stop and delete server ``name`` (e.g. ``server-2``) and forget it in the state and settings files.

        Refused, with what to do, while the catalog places any logical shard on it, while it still holds
        rows, or while a migration runs: removing a server never loses a row. An HA stack removes its last
        server only (its Patroni clusters are numbered by position)."""
        state = self.load_state()
        if state is None:
            raise StackError(f"no stack in {self.data_dir}")
        names = self.server_names(state)
        if name not in names:
            raise StackError(f"no server {name!r} in the stack in {self.data_dir}; it has {', '.join(names)}")
        if len(names) == 1:
            raise StackError(f"{name} is the stack's only server; `shardctl stack down --purge` removes the stack")
        if state.ha is not None and name != names[-1]:
            raise StackError(f"an HA stack removes its last server only ({names[-1]}), not {name}")
        self._check_removable(state, name)
        position = names.index(name)
        if state.ha is None:
            server = self.postgres_servers(state)[1 + position]
            if not server.stop():
                raise StackError(f"could not stop {name} (pid {server.pid()})")
        else:
            cluster = self.ha_cluster(state)
            assert cluster is not None
            failed = [m.name for m in cluster.members(position) if not m.stop()]
            if failed:
                raise StackError(f"could not stop {', '.join(failed)}")
        before = StackState(**json.loads(json.dumps(asdict(state))))
        if state.ha is None:
            state.server_ids = [n for n in self.server_ids(state) if server_name(n) != name]
            del state.shard_ports[position]
        else:
            del state.ha["members"][position]
        self._save_state(state)
        self._write_settings(state)
        self._drop_data(before, [name])
        maps = ShardMapStore(self.postgres_servers(state)[0].dsn())
        forget = getattr(maps, "unregister_server", None)  # the catalog forgets it where the store can
        if forget is not None:
            forget(name)
        return state

    def _check_removable(self, state: StackState, name: str) -> None:
        catalog = self.postgres_servers(state)[0].dsn()
        journal = Journal(catalog)
        journal.ensure_schema()
        running = journal.running()
        if running is not None:
            raise StackError(
                f"migration {running.id} is running (phase {running.phase}): let it finish or "
                f"`shardctl migrate abort` before removing {name}"
            )
        placed = ShardMapStore(catalog).current().logical_shards_on(name)
        if placed:
            raise StackError(
                f"{name} holds {len(placed)} logical shards: move them to the other servers first "
                f"(`shardctl migrate run --remove-server {name}`), then remove it"
            )
        dsn = {e["name"]: e["dsn"] for e in self._shard_entries(state, self.postgres_servers(state)[1:])}[name]
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                left = conn.execute("SELECT count(*) FROM entity_features").fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            raise StackError(f"cannot check that {name} is empty ({exc}); bring it up first") from exc
        if left:
            raise StackError(
                f"{name} holds no logical shard but still has {left} rows (a migration's cleanup did not "
                f"finish?): run `shardctl migrate resume` first"
            )

    def _drop_data(self, state: StackState, names: list[str]) -> None:
        """Delete the data of servers ``names`` of ``state`` (stopped), and with HA their clusters' keys in etcd,
        so a server added later under the same number starts afresh."""
        ids = dict(zip(self.server_names(state), self.server_ids(state), strict=True))
        for name in names:
            number = ids[name]
            if state.ha is None:
                shutil.rmtree(Path(state.pg_root) / f"shard{number}", ignore_errors=True)
                (Path(state.pg_root) / f"shard{number}.log").unlink(missing_ok=True)
            else:
                shutil.rmtree(Path(state.ha["root"]) / f"shard{number}", ignore_errors=True)
                cluster = self.ha_cluster(state)
                assert cluster is not None
                forget_scope(cluster.etcd.url, f"shard{number}")

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
