"""Continuous WAL archiving: each server of the stack starts with ``archive_mode`` on and an ``archive_command``
that pushes every finished WAL segment into the stack's pgBackRest repository, in a file of its own
(``tessera-archive.conf``, included from ``postgresql.conf``) so the other settings stay untouched and a restore
can point a restored server at its new stack's repository. A stack whose PostgreSQL pgBackRest does not support
starts without archiving (``pgbackrest.unavailable_reason``).

An HA shard is one stanza whose members are its Patroni cluster's. Every member archives with ``archive_mode =
always`` (Patroni's parameters, ``member_parameters``): a replica pushes each segment it received too, so the
segments an old primary had not archived when it died are in the repository from its synchronous replica, and
the chain has no gap through a failover (pgBackRest accepts a segment pushed twice with the same content)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shardctl.backup.pgbackrest import PgBackRestError, PgLocation, Repository, Stanza, unavailable_reason
from shardctl.backup.settings import BackupSettings
from shardctl.stack.postgres import SERVER_PASSFILE, PostgresServer

if TYPE_CHECKING:
    from shardctl.stack.ha.cluster import HACluster

log = logging.getLogger(__name__)

ARCHIVE_CONF = "tessera-archive.conf"
_INCLUDE = f"include_if_exists = '{ARCHIVE_CONF}'"
CATALOG_STANZA = "catalog"


def default_root(pg_root: str | Path) -> Path:
    """Where a stack's repository is unless ``TESSERA_BACKUP__REPO_PATH`` says otherwise: beside its data."""
    return Path(f"{Path(pg_root)}-backups")


def repository_for(
    pg_root: str | Path, user: str | None, catalog: PostgresServer, settings: BackupSettings | None = None
) -> Repository:
    """The stack's repository: ``TESSERA_BACKUP__REPO_PATH``, else beside its servers' data. pgBackRest logs in
    with the superuser's passfile in the ``catalog`` server's folder (every server of a stack starts as a copy of
    one template, so each holds it; the server user can read it)."""
    settings = settings or BackupSettings()
    root = Path(settings.repo_path) if settings.repo_path else default_root(pg_root)
    return Repository(root.absolute(), user, catalog.data_dir.absolute() / SERVER_PASSFILE)


def stanza_of(name: str, server: PostgresServer) -> Stanza:
    return Stanza(name, (PgLocation(server.data_dir, server.port, server.socket_dir),))


def prepare(
    servers: Sequence[tuple[str, PostgresServer]],
    pg_root: str,
    user: str | None,
    postgres: dict[str, str],
    settings: BackupSettings | None = None,
    ha_shards: Sequence[Stanza] = (),
) -> Repository | None:
    """Before the servers start: write the repository's config for ``servers`` (stanza name, server) and the
    ``ha_shards`` (their members archive through ``member_parameters``), and each plain server's archive
    settings. None, and nothing written, when pgBackRest cannot back this PostgreSQL up."""
    if unavailable_reason(postgres["version"], postgres["source"]) is not None:
        return None
    settings = settings or BackupSettings()
    repo = repository_for(pg_root, user, servers[0][1], settings)
    repo.write_config([*(stanza_of(name, server) for name, server in servers), *ha_shards], settings)
    for name, server in servers:
        configure(server, repo, name, settings)
    return repo


def ha_stanzas(cluster: HACluster, names: Sequence[str]) -> list[Stanza]:
    """A stanza per HA shard (``names`` in shard order), its members those of the shard's Patroni cluster."""
    return [
        Stanza(name, tuple(PgLocation(m.plan.data_dir, m.plan.pg_port, m.plan.root) for m in cluster.members(shard)))
        for shard, name in enumerate(names)
    ]


def member_parameters(repo: Repository, stanza: str, data_dir: Path, settings: BackupSettings) -> dict[str, str]:
    """The archive settings of one member of an HA shard, as Patroni parameters (see the module's docstring)."""
    return {
        "archive_mode": "always",
        "archive_command": repo.archive_command(stanza, data_dir),
        "archive_timeout": str(settings.archive_timeout_s),
    }


def start(repo: Repository, stanzas: Sequence[str]) -> None:
    """Once the servers run: create each stanza in the repository (idempotent), so every WAL segment a server
    finishes is archived from then on (until it exists, ``archive-push`` fails and WAL piles up in pg_wal).
    A failure is logged, not raised: the stack runs without archiving then, and `shardctl backup create` says
    what fails."""
    for stanza in stanzas:
        try:
            repo.create_stanza(stanza)
        except PgBackRestError as exc:
            log.warning("WAL archiving of %s does not work, backups of it will fail: %s", stanza, exc)


def configure(server: PostgresServer, repo: Repository, stanza: str, settings: BackupSettings) -> None:
    """Point ``server``'s archiving at ``repo`` (``archive_mode`` takes effect at its next start)."""
    command = repo.archive_command(stanza).replace("'", "''")
    archive_conf = server.data_dir / ARCHIVE_CONF
    archive_conf.write_text(
        f"archive_mode = on\narchive_command = '{command}'\narchive_timeout = {settings.archive_timeout_s}\n"
    )
    conf = server.data_dir / "postgresql.conf"
    if _INCLUDE not in conf.read_text():
        with open(conf, "a") as out:
            out.write(f"\n{_INCLUDE}\n")
    if server.user is not None:
        shutil.chown(archive_conf, server.user, server.user)
