"""Where the local stack is: its state file (what `up` planned and started), the servers that state describes (the
catalog, the shard servers or Patroni clusters, Redis) with their ports and data folders, and the settings file
the other parts read the topology from. Everything here is derived from the state; nothing here starts or stops
a server (``lifecycle``), reports health (``status``) or changes the set of servers (``topology``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardctl.errors import LocalStackError
from shardctl.java import find_java
from shardctl.process import allocate_ports
from shardctl.redis_acl import ADMIN_USER, SCORER_USER, SERVING_USER
from shardctl.settings import SETTINGS_FILE_NAME
from shardctl.stack.binaries import PostgresBinaries, find_postgres, find_redis_server
from shardctl.stack.ha.cluster import HACluster, HAState
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import SUPERUSER, PostgresServer
from shardctl.stack.redis_server import RedisServer
from shardctl.stack.secrets import StackSecrets
from shardctl.stack.server_runtime import reachable_postgres
from shardctl.stack.tls import StackTLS
from shardctl.stack.users import chown_tree, server_user, user_can_write
from shardctl.store.grants import PIPELINE_ROLE, SCORER_ROLE, SERVING_ROLE, WRITER_ROLE
from shardctl.store.shardmap import server_name  # server n of the stack is server-n in the catalog

STATE_FILE_NAME = "stack.json"
CATALOG = "catalog"
DAGSTER_DATABASE = "dagster"


class StackError(LocalStackError, RuntimeError):
    """A request the stack cannot honour; the message says why and what to do."""


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
    # `up --tls`: every Postgres server takes TLS only and clients verify it (shardctl/stack/tls.py).
    tls: bool = False
    # The scorer `stack up` started (``shardctl/stack/scorer_process.py``) and its probe port; None: not started.
    scorer_pid: int | None = None
    scorer_port: int | None = None

    def copy(self) -> StackState:
        """A deep copy, to change while the original is kept (to restore, or to find what was removed)."""
        return StackState(**json.loads(json.dumps(asdict(self))))


NO_PASSWORDS = (
    "this stack was created without passwords; run `shardctl stack down --purge` and `shardctl stack up` again"
)


def refuse_stack_without_passwords(layout: StackLayout, state: StackState | None) -> None:
    """A stack laid out before its servers had passwords (no secrets folder) cannot be reached any more by the
    parts, which now log in with them: ``StackError`` saying what to do. Every new state gets its secrets
    when it is planned, so only such an old stack has a state without them."""
    if state is not None and not layout.secrets.exists():
        raise StackError(NO_PASSWORDS)


def _plain_ids(state: StackState) -> list[int]:
    """The plain servers' numbers, parallel to ``shard_ports`` (empty on an HA stack)."""
    return list(state.server_ids) if state.server_ids is not None else list(range(len(state.shard_ports)))


@dataclass
class StackLayout:
    """The stack rooted at ``data_dir``: its files, and the servers, ports and folders a state describes. The
    other fields say where to find binaries and Java, and how to lay out a new stack."""

    data_dir: Path
    postgres_bin_dir: str | None = None
    run_as_user: str | None = None
    ha_settings: HASettings = field(default_factory=HASettings)
    java_home: str | None = None
    ha_proxied: bool = False  # members talk through fault-injection proxies (nemesis runs only)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    # -- files -----------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE_NAME

    @property
    def settings_file(self) -> Path:
        return self.data_dir / SETTINGS_FILE_NAME

    @property
    def secrets(self) -> StackSecrets:
        """The stack's passwords (``<data_dir>/secrets``)."""
        return StackSecrets.of(self.data_dir)

    def load_state(self) -> StackState | None:
        try:
            recorded = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        # Keys a newer or older version wrote and this one does not know are ignored, not an error.
        return StackState(**{k: v for k, v in recorded.items() if k in StackState.__dataclass_fields__})

    def save_state(self, state: StackState) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    # -- servers ---------------------------------------------------------------------------------------
    def binaries(self, state: StackState) -> PostgresBinaries:
        p = state.postgres
        return PostgresBinaries(Path(p["bin_dir"]), p["version"], p["source"])

    def postgres_servers(self, state: StackState) -> list[PostgresServer]:
        """The catalog first, then shards in index order."""
        binaries = self.binaries(state)
        root = Path(state.pg_root)
        passfile = self.secrets.pgpass(SUPERUSER)
        tls = self.tls(state)
        ca = str(tls.ca_file) if tls is not None else None
        servers = [PostgresServer(CATALOG, state.catalog_port, root / CATALOG, binaries, state.user, passfile, ca)]
        servers += [
            PostgresServer(f"shard{n}", port, root / f"shard{n}", binaries, state.user, passfile, ca)
            for n, port in zip(_plain_ids(state), state.shard_ports, strict=True)
        ]
        return servers

    @staticmethod
    def tls(state: StackState) -> StackTLS | None:
        """The stack's CA and server certificate (``up --tls``), or None for a stack without TLS."""
        return StackTLS(Path(state.pg_root) / "tls") if state.tls else None

    def catalog_dsn(self, state: StackState) -> str:
        return self.postgres_servers(state)[0].dsn()

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
        return HACluster(HAState.from_dict(state.ha), state.user, state.postgres["bin_dir"], self.secrets)

    @staticmethod
    def shard_count(state: StackState) -> int:
        return len(state.ha["members"]) if state.ha else len(state.shard_ports)

    def redis_server(self, state: StackState) -> RedisServer:
        """The stack's Redis: its ACL file from the secrets, answering to the admin user."""
        secrets = self.secrets
        return RedisServer(
            state.redis_port,
            self.data_dir / "redis",
            state.redis_binary,
            state.redis_pid,
            acl_file=secrets.redis_acl_file,
            username=ADMIN_USER,
            password=secrets.redis_password(ADMIN_USER) if secrets.exists() else None,
        )

    @staticmethod
    def ports(state: StackState) -> list[int]:
        """Every port the stack's layout uses (so an added server takes none of them)."""
        ports = [state.catalog_port, *state.shard_ports, state.redis_port]
        if state.ha is not None:
            ports += [state.ha["etcd_client_port"], state.ha["etcd_peer_port"]]
            ports += [p for server in state.ha["members"] for member in server for p in member]
            ports += [p for server in state.ha.get("proxies", []) for member in server for p in member]
        return ports

    # -- planning a new stack --------------------------------------------------------------------------
    def plan(
        self, shards: int, base_port: int, ha: bool = False, replicas: int | None = None, tls: bool = False
    ) -> StackState:
        """A new stack's state (binaries, Java, free ports, folders), not saved and nothing started."""
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
        if ha_state is not None and tls:
            ha_state["tls"] = str(pg_root / "tls")
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
            tls=tls,
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

    # -- the settings file -----------------------------------------------------------------------------
    def write_settings(self, state: StackState) -> None:
        """Write the topology where settings read it (``<data_dir>/settings.json``)."""
        servers = self.postgres_servers(state)
        settings = {
            "data_dir": str(self.data_dir),
            "catalog_dsn": servers[0].dsn(),
            "servers": self.shard_entries(state),
            "redis_url": self.redis_server(state).url,
            "h2o": {"java_home": state.java_home},
            "dagster_dsn": servers[0].dsn(DAGSTER_DATABASE),
            # Each part's own role (shardctl/credentials.py) and the libpq passfile holding its password (a path:
            # no password is ever written here; docs/architecture/physical.md, "Passwords of the local stack").
            # The top-level DSNs above name the stack's superuser and its passfile: they are the operator's
            # (tests, `shardctl` commands); the control plane runs as it, since PostgreSQL 15 lets only a
            # superuser create the subscriptions resharding uses.
            "serving": {
                **self._login(SERVING_ROLE),
                "redis_username": SERVING_USER,
                "redis_password_file": str(self.secrets.redis_password_file(SERVING_USER)),
            },
            "writer": self._login(WRITER_ROLE),
            "pipeline": self._login(PIPELINE_ROLE),
            "scorer": {
                **self._login(SCORER_ROLE),
                "redis_username": SCORER_USER,
                "redis_password_file": str(self.secrets.redis_password_file(SCORER_USER)),
            },
            "control": self._login(SUPERUSER),
        }
        self.settings_file.write_text(json.dumps(settings, indent=2))

    def _login(self, role: str) -> dict[str, str]:
        return {"db_user": role, "db_passfile": str(self.secrets.pgpass(role))}

    def shard_entries(self, state: StackState) -> list[dict[str, Any]]:
        """Each server's settings entry: index, catalog name and DSN (multi-host for a Patroni cluster)."""
        cluster = self.ha_cluster(state)
        names = self.server_names(state)
        if cluster is None:
            return [
                {"index": i, "name": names[i], "dsn": s.dsn()} for i, s in enumerate(self.postgres_servers(state)[1:])
            ]
        # Multi-host DSNs: every client finds the current primary itself, no proxy in between.
        return [{"index": i, "name": names[i], "dsn": cluster.shard_dsn(i)} for i in range(cluster.shard_count())]
