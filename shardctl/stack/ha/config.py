"""Patroni configuration for one member of a shard's cluster, generated from `HASettings`.

Pure functions: the plan (ports, paths) and the settings go in, a Patroni YAML document comes out, so the
choices (streaming replication, synchronous mode, pg_rewind, timings) are unit-tested without servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg.conninfo import make_conninfo

from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import REPLICATION_USER, SUPERUSER, hostssl_only

# Every connection, local socket included, logs in with a SCRAM password; replication only as its own user.
PG_HBA = [
    "local all all scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
    f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
]
# Small servers for a shared 2-core machine; wal_level=logical leaves room for online resharding.
PG_PARAMETERS: dict[str, Any] = {
    "max_connections": 100,
    "shared_buffers": "64MB",
    "wal_level": "logical",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind needs it (or data checksums)
    "logging_collector": "off",
}


@dataclass(frozen=True)
class MemberPlan:
    """Where one member of a shard's cluster lives: its Postgres port, REST API port and directory."""

    shard: int
    index: int
    pg_port: int
    api_port: int
    root: Path  # holds data/, patroni.yml, patroni.log
    # Fault-injection runs (the nemesis) route traffic between members and to etcd through proxies they can
    # cut: the ports the other members reach this one's Postgres and REST API on, and the port it reaches
    # etcd on. None: the real ports (every normal stack).
    pg_connect_port: int | None = None
    api_connect_port: int | None = None
    etcd_port: int | None = None
    # `stack up --tls`: the stack's CA and server certificate (shardctl/stack/tls.py); None without TLS.
    tls_dir: Path | None = None

    @property
    def name(self) -> str:
        return f"shard{self.shard}-m{self.index}"

    @property
    def scope(self) -> str:
        return f"shard{self.shard}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_file(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def log_file(self) -> Path:
        return self.root / "patroni.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass(frozen=True)
class Logins:
    """The passwords a member's Patroni needs (from the stack's secrets; never in a repr): the superuser's (also
    what pg_rewind connects as), the replication user's, the REST API's for its unsafe endpoints, and its etcd
    user's."""

    superuser: str = field(repr=False)
    replication: str = field(repr=False)
    api_user: str
    api_password: str = field(repr=False)
    etcd_user: str = "patroni"  # etcd's user with read-write on the Patroni namespace only
    etcd_password: str = field(default="", repr=False)


def dynamic_config(ha: HASettings) -> dict[str, Any]:
    """The cluster-wide (DCS) part: timings, replication mode, rewind; Patroni stores it in etcd at bootstrap."""
    return {
        "ttl": ha.ttl,
        "loop_wait": ha.loop_wait,
        "retry_timeout": ha.retry_timeout,
        "maximum_lag_on_failover": ha.maximum_lag_on_failover,
        # A crashed primary Postgres is not restarted in place when a healthy sync replica can take over.
        "primary_start_timeout": 0,
        "synchronous_mode": ha.synchronous_mode,
        "synchronous_mode_strict": ha.synchronous_mode_strict,
        "failsafe_mode": ha.failsafe_mode,
        "postgresql": {
            "use_pg_rewind": ha.use_pg_rewind,
            "use_slots": True,
            "parameters": PG_PARAMETERS,
        },
    }


def member_config(
    member: MemberPlan,
    ha: HASettings,
    etcd_url: str,
    bin_dir: str,
    logins: Logins,
    parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole Patroni configuration of one member (it holds passwords: its folder is the server user's, 0700);
    ``parameters`` are this member's own PostgreSQL settings (its WAL archiving: ``shardctl.backup.archiving``)."""
    etcd_host = f"127.0.0.1:{member.etcd_port}" if member.etcd_port else etcd_url.removeprefix("http://")
    return {
        "scope": member.scope,
        "namespace": "/tessera/",
        "name": member.name,
        "log": {"level": "INFO", "dir": str(member.root), "file_num": 2, "file_size": 20_000_000},
        "restapi": {
            "listen": f"127.0.0.1:{member.api_port}",
            "connect_address": f"127.0.0.1:{member.api_connect_port or member.api_port}",
            # Unsafe endpoints (switchover, restart, reinitialize, config) need these; GETs stay open (status).
            "authentication": {"username": logins.api_user, "password": logins.api_password},
        },
        # Through a proxy, Patroni must not discover etcd's own address and go around it.
        "etcd3": {
            "hosts": [etcd_host],
            "protocol": "http",
            **({"username": logins.etcd_user, "password": logins.etcd_password} if logins.etcd_password else {}),
            **({"use_proxies": True} if member.etcd_port else {}),
        },
        "bootstrap": {
            "dcs": dynamic_config(ha),
            "initdb": [
                {"encoding": "UTF8"},
                {"locale": "C"},
                {"auth-host": "scram-sha-256"},
                {"auth-local": "scram-sha-256"},
                "no-sync",
            ],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{member.pg_port}",
            "connect_address": f"127.0.0.1:{member.pg_connect_port or member.pg_port}",
            "data_dir": str(member.data_dir),
            "bin_dir": bin_dir,
            "pgpass": str(member.root / "pgpass"),
            "pg_hba": PG_HBA,
            "authentication": {
                "superuser": {"username": SUPERUSER, "password": logins.superuser},
                "replication": {"username": REPLICATION_USER, "password": logins.replication},
                "rewind": {"username": SUPERUSER, "password": logins.superuser},
            },
            "parameters": {"unix_socket_directories": str(member.root), **(parameters or {})},
            # A clone (a new replica, `ha reinit`) asks the primary for an immediate checkpoint instead of
            # waiting out a spread one: seen here, 110 s instead of ~2 s.
            "basebackup": [{"checkpoint": "fast"}],
            # A replica that cannot rewind is re-cloned rather than left broken.
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def render(config: dict[str, Any], tls_dir: Path | None = None) -> str:
    """A member's patroni.yml text from its ``member_config``, taking TLS only when ``tls_dir`` is given."""
    if tls_dir is not None:
        config = with_tls(config, tls_dir)
    return yaml.safe_dump(config, sort_keys=False)


def with_tls(config: dict[str, Any], tls_dir: Path) -> dict[str, Any]:
    """``config`` taking TLS only (a TLS stack): ssl on with the stack's certificate, every TCP line of pg_hba
    ``hostssl``, and Patroni's own connections (replication, rewind, its superuser's) verifying the other
    member's certificate as every client does."""
    postgresql = config["postgresql"]
    postgresql["parameters"] = {
        **postgresql["parameters"],
        "ssl": "on",
        "ssl_cert_file": str(tls_dir / "server.crt"),
        "ssl_key_file": str(tls_dir / "server.key"),
    }
    postgresql["pg_hba"] = hostssl_only("\n".join(postgresql["pg_hba"])).splitlines()
    for role in postgresql["authentication"].values():
        role.update(sslmode="verify-full", sslrootcert=str(tls_dir / "ca.crt"))
    return config


def multi_host_dsn(
    pg_ports: list[int], dbname: str = "tessera", connect_timeout: int = 2, passfile: Path | None = None
) -> str:
    """A libpq DSN naming every member: libpq tries each and keeps the one that accepts writes. ``passfile``
    (the superuser's libpq passfile) is a path, not a secret."""
    hosts = ",".join("127.0.0.1" for _ in pg_ports)
    ports = ",".join(str(p) for p in pg_ports)
    login = {"passfile": str(passfile)} if passfile is not None else {}
    return make_conninfo(
        host=hosts,
        port=ports,
        dbname=dbname,
        user=SUPERUSER,
        **login,
        target_session_attrs="read-write",
        connect_timeout=connect_timeout,
    )
