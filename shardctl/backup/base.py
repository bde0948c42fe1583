"""Base backups of every server of the stack (`shardctl backup create`), what the repository holds
(`backup list`), and pgBackRest's own verification of it (`backup verify`).

A backup is a pgBackRest backup per server (full the first time or when asked, incremental after), then a
consistent restore point, so every backup can be restored to at once. pgBackRest expires backups beyond
``TESSERA_BACKUP__RETENTION_FULL`` full ones (and the WAL only they need) after each backup."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shardctl.backup.pgbackrest import PgBackRestError
from shardctl.backup.points import RestorePoint, list_points, take_point
from shardctl.backup.settings import BackupSettings
from shardctl.backup.target import BackupTarget
from shardctl.errors import BackupError
from shardctl.store.connection import connect
from shardctl.store.shardmap import ShardMapStore


@dataclass(frozen=True)
class ServerBackup:
    """One server's backup as `backup create` made it or `backup list` finds it."""

    stanza: str
    label: str
    kind: str  # full, diff or incr
    started: int  # unix time
    stopped: int
    size: int  # bytes of the database at backup time
    repo_size: int  # bytes stored (compressed, incremental)
    lsn_start: str
    lsn_stop: str

    @classmethod
    def from_info(cls, stanza: str, info: dict[str, Any]) -> ServerBackup:
        return cls(
            stanza,
            info["label"],
            info["type"],
            info["timestamp"]["start"],
            info["timestamp"]["stop"],
            info["info"]["size"],
            info["info"]["repository"]["delta"],
            info["lsn"]["start"],
            info["lsn"]["stop"],
        )


@dataclass(frozen=True)
class BackupReport:
    backups: list[ServerBackup]
    point: RestorePoint
    seconds: float


def create(
    target: BackupTarget, *, full: bool = False, point: str | None = None, settings: BackupSettings | None = None
) -> BackupReport:
    """Back up every server, then take a consistent restore point (named ``point``, or by the time)."""
    settings = settings or BackupSettings()
    started = time.monotonic()
    _check_servers(target)

    def back_up(stanza: str) -> ServerBackup:
        target.repo.create_stanza(stanza)
        kind = "full" if full or not target.repo.backups(stanza) else "incr"
        target.repo.run(stanza, "backup", f"--type={kind}")
        return ServerBackup.from_info(stanza, target.repo.backups(stanza)[-1])

    with ThreadPoolExecutor(max_workers=len(target.stanzas)) as pool:  # each server's checkpoint and copy at once
        made = list(pool.map(back_up, [s.name for s in target.stanzas]))
    taken = take_point(target, point, settings)
    return BackupReport(made, taken, round(time.monotonic() - started, 2))


def _check_servers(target: BackupTarget) -> None:
    """Every server the catalog knows is one of the stack's (no other can be backed up here), and each archives
    its WAL (a server started before backups existed needs a restart to turn ``archive_mode`` on)."""
    stanzas = {s.name for s in target.server_stanzas}
    foreign = sorted(set(ShardMapStore(target.catalog_dsn).registered_servers()) - stanzas)
    if foreign:
        raise BackupError(
            f"server(s) {', '.join(foreign)} are not this stack's: a backup of the stack cannot cover them"
        )
    for name, dsn in target.dsns.items():
        with connect(dsn, connect_timeout=5) as conn:
            mode = conn.execute("SHOW archive_mode").fetchone()[0]  # type: ignore[index]
        if mode not in ("on", "always"):  # always: an HA shard's primary (its replicas archive too)
            raise BackupError(
                f"{name} does not archive its WAL (started before backups existed): restart the stack "
                f"(`shardctl stack down`, then `shardctl stack up`) to turn archiving on"
            )


def inventory(target: BackupTarget) -> tuple[dict[str, list[ServerBackup]], list[RestorePoint]]:
    """Each server's backups (oldest first) and the consistent points, as the repository holds them."""
    backups = {}
    for stanza in target.stanzas:
        try:
            backups[stanza.name] = [ServerBackup.from_info(stanza.name, b) for b in target.repo.backups(stanza.name)]
        except PgBackRestError:
            backups[stanza.name] = []  # no stanza yet: nothing backed up
    return backups, list_points(target.repo)


def restorable(point: RestorePoint, backups: dict[str, list[ServerBackup]]) -> bool:
    """True when every server of ``point`` has a backup that ends at or before it (retention may have expired
    the last one)."""
    return all(base_for(point, stanza, backups.get(stanza, [])) is not None for stanza in point.lsns)


def base_for(point: RestorePoint, stanza: str, backups: list[ServerBackup]) -> ServerBackup | None:
    """The newest backup of ``stanza`` that ends at or before the point: recovery starts from it."""
    target = lsn_value(point.lsns[stanza])
    done = [b for b in backups if lsn_value(b.lsn_stop) <= target]
    return done[-1] if done else None


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True)
class VerifyResult:
    stanza: str
    ok: bool
    detail: str


def verify(target: BackupTarget) -> list[VerifyResult]:
    """pgBackRest's ``verify`` of every server's backups and archived WAL (each file against its checksum)."""
    results = []
    for stanza in target.stanzas:
        try:
            out = target.repo.verify(stanza.name)
        except PgBackRestError as exc:
            results.append(VerifyResult(stanza.name, False, str(exc)))
            continue
        results.append(VerifyResult(stanza.name, _verified_clean(out), out.strip()))
    return results


def _verified_clean(text: str) -> bool:
    """pgBackRest 2.45's text output counts what it found invalid: clean when every count is zero."""
    import re

    counts = [int(n) for n in re.findall(r"(?:invalid|missing|checksum invalid|size invalid|other)\s*:\s*(\d+)", text)]
    return all(n == 0 for n in counts) and "status: error" not in text
