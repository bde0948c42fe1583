"""The stack a backup command works on: its servers as pgBackRest stanzas (the catalog first, then the shard
servers by their catalog names), its repository, and a DSN per server as the control plane connects."""

from __future__ import annotations

from dataclasses import dataclass

from shardctl.backup.archiving import CATALOG_STANZA, ha_stanzas, repository_for, stanza_of
from shardctl.backup.pgbackrest import BackupUnavailableError, Repository, Stanza, unavailable_reason
from shardctl.backup.settings import BackupSettings
from shardctl.control.settings import ControlSettings
from shardctl.credentials import with_credentials
from shardctl.errors import BackupError
from shardctl.stack.layout import StackLayout, StackState


@dataclass(frozen=True)
class BackupTarget:
    """One stack as its backups see it."""

    layout: StackLayout
    state: StackState
    repo: Repository
    stanzas: tuple[Stanza, ...]  # catalog first
    dsns: dict[str, str]  # stanza name -> DSN (the control plane's role)

    @property
    def catalog_dsn(self) -> str:
        return self.dsns[CATALOG_STANZA]

    @property
    def server_stanzas(self) -> tuple[Stanza, ...]:
        return self.stanzas[1:]


def open_target(
    layout: StackLayout, settings: BackupSettings | None = None, control: ControlSettings | None = None
) -> BackupTarget:
    """The stack in ``layout``'s data dir; ``BackupError`` when there is none, ``BackupUnavailableError`` when
    it cannot be backed up (with why and what to do)."""
    state = layout.load_state()
    if state is None:
        raise BackupError(f"no stack in {layout.data_dir}: run `shardctl stack up` first")
    reason = unavailable_reason(state.postgres["version"], state.postgres["source"])
    if reason is not None:
        raise BackupUnavailableError(reason)
    credentials = (control or ControlSettings.of_stack(layout.data_dir)).db_credentials()
    catalog = layout.postgres_servers(state)[0]
    names = layout.server_names(state)
    cluster = layout.ha_cluster(state)
    if cluster is None:  # plain: one server per stanza
        servers = layout.postgres_servers(state)[1:]
        stanzas = [stanza_of(name, server) for name, server in zip(names, servers, strict=True)]
        dsns = {name: server.dsn() for name, server in zip(names, servers, strict=True)}
    else:  # HA: a shard's Patroni cluster per stanza, reached at its primary through the multi-host DSN
        stanzas = ha_stanzas(cluster, names)
        dsns = {name: cluster.shard_dsn(shard) for shard, name in enumerate(names)}
    return BackupTarget(
        layout,
        state,
        repository_for(state.pg_root, state.user, catalog, settings),
        (stanza_of(CATALOG_STANZA, catalog), *stanzas),
        {name: with_credentials(dsn, credentials) for name, dsn in {CATALOG_STANZA: catalog.dsn(), **dsns}.items()},
    )
