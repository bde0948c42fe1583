"""The stack a backup command works on: its servers as pgBackRest stanzas (the catalog first, then the shard
servers by their catalog names), its repository, and a DSN per server as the control plane connects."""

from __future__ import annotations

from dataclasses import dataclass

from shardctl.backup.archiving import CATALOG_STANZA, repository_for, stanza_of
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
    if state.ha is not None:
        raise BackupUnavailableError(
            "backups of an HA stack (Patroni clusters) are not built yet: only plain stacks archive and back up"
        )
    reason = unavailable_reason(state.postgres["version"], state.postgres["source"])
    if reason is not None:
        raise BackupUnavailableError(reason)
    credentials = (control or ControlSettings.of_stack(layout.data_dir)).db_credentials()
    servers = layout.postgres_servers(state)
    names = [CATALOG_STANZA, *layout.server_names(state)]
    return BackupTarget(
        layout,
        state,
        repository_for(state.pg_root, state.user, servers[0], settings),
        tuple(stanza_of(name, server) for name, server in zip(names, servers, strict=True)),
        {name: with_credentials(server.dsn(), credentials) for name, server in zip(names, servers, strict=True)},
    )
