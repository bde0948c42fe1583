"""Patroni configuration for one member of a shard's cluster, generated from `HASettings`.

Pure functions: the plan (ports, paths) and the settings go in, a Patroni YAML document comes out, so the
choices (streaming replication, synchronous mode, pg_rewind, timings) are unit-tested without servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shardctl.stack.ha.settings import HASettings
from shardctl.stack.postgres import SUPERUSER, hostssl_only

REPLICATION_USER = "replicator"
# Trust on loopback only: the local stack is for development and tests (as the plain stack is).
PG_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "local replication all trust",
    "host replication all 127.0.0.1/32 trust",
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


def member_config(member: MemberPlan, ha: HASettings, etcd_url: str, bin_dir: str) -> dict[str, Any]:
    """The whole Patroni configuration of one member."""
    etcd_host = f"127.0.0.1:{member.etcd_port}" if member.etcd_port else etcd_url.removeprefix("http://")
    return {
        "scope": member.scope,
        "namespace": "/tessera/",
        "name": member.name,
        "log": {"level": "INFO", "dir": str(member.root), "file_num": 2, "file_size": 20_000_000},
        "restapi": {
            "listen": f"127.0.0.1:{member.api_port}",
            "connect_address": f"127.0.0.1:{member.api_connect_port or member.api_port}",
        },
        # Through a proxy, Patroni must not discover etcd's own address and go around it.
        "etcd3": {"hosts": [etcd_host], "protocol": "http", **({"use_proxies": True} if member.etcd_port else {})},
        "bootstrap": {
            "dcs": dynamic_config(ha),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{member.pg_port}",
            "connect_address": f"127.0.0.1:{member.pg_connect_port or member.pg_port}",
            "data_dir": str(member.data_dir),
            "bin_dir": bin_dir,
            "pgpass": str(member.root / "pgpass"),
            "pg_hba": PG_HBA,
            "authentication": {
                "superuser": {"username": SUPERUSER},
                "replication": {"username": REPLICATION_USER},
                "rewind": {"username": SUPERUSER},
            },
            "parameters": {"unix_socket_directories": str(member.root)},
            # A clone (a new replica, `ha reinit`) asks the primary for an immediate checkpoint instead of
            # waiting out a spread one: seen here, 110 s instead of ~2 s.
            "basebackup": [{"checkpoint": "fast"}],
            # A replica that cannot rewind is re-cloned rather than left broken.
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def render(member: MemberPlan, ha: HASettings, etcd_url: str, bin_dir: str) -> str:
    """The member's patroni.yml text."""
    config = member_config(member, ha, etcd_url, bin_dir)
    if member.tls_dir is not None:
        config = with_tls(config, member.tls_dir)
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


def multi_host_dsn(pg_ports: list[int], dbname: str = "tessera", connect_timeout: int = 2) -> str:
    """A libpq DSN naming every member: libpq tries each and keeps the one that accepts writes."""
    hosts = ",".join("127.0.0.1" for _ in pg_ports)
    ports = ",".join(str(p) for p in pg_ports)
    return (
        f"host={hosts} port={ports} dbname={dbname} user={SUPERUSER} "
        f"target_session_attrs=read-write connect_timeout={connect_timeout}"
    )
